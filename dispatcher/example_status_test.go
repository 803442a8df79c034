package dispatcher_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// Mount the status handler as a readiness probe: it answers 503 when the oldest pending
// message is older than MaxLag, the dispatcher is stopped, or the store cannot be read.
func ExampleDispatcher_StatusHandler() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	db, err := sqlitestore.Open(filepath.Join(dir, "app.db"))
	if err != nil {
		panic(err)
	}
	defer db.Close()
	outbox, err := sqlitestore.New(db, sqlitestore.Config{})
	if err != nil {
		panic(err)
	}
	if err := outbox.Migrate(ctx); err != nil {
		panic(err)
	}
	d, err := dispatcher.New(outbox, outboxtest.NewPublisher(), dispatcher.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	if err := d.Start(ctx); err != nil {
		panic(err)
	}
	defer d.Stop(ctx)

	mux := http.NewServeMux()
	mux.Handle("/ready", d.StatusHandler(dispatcher.StatusConfig{MaxLag: time.Minute}))
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ready", nil))
	var st dispatcher.Status
	if err := json.NewDecoder(rec.Body).Decode(&st); err != nil {
		panic(err)
	}
	fmt.Println(rec.Code, st.Healthy, st.Mode, st.Pending)
	// Output:
	// 200 true polling 0
}
