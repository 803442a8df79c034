package sqlitestore_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/internal/sqlstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// Open takes the file's path bare or after sqlite:// or file:, as the operator command does,
// and each opens the same file.
func TestOpenTakesAPathBareOrAfterAScheme(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.db")
	ctx := context.Background()
	first, err := sqlitestore.Open("sqlite://" + path)
	require.NoError(t, err)
	defer first.Close()
	st, err := sqlstore.EngineOf(sqlitestore.New(first, sqlitestore.Config{}))
	require.NoError(t, err)
	require.NoError(t, st.Migrate(ctx))
	require.NoError(t, st.Write(ctx, first, store.Message{Topic: "orders", Payload: []byte("1")}))
	_, err = os.Stat(path)
	require.NoError(t, err, "sqlite://%s is the file %s", path, path)

	t.Chdir(dir)
	for _, dsn := range []string{path, "sqlite://" + path, "SQLite://" + path, "file:" + path, "FILE:" + path, "sqlite://app.db", "file:app.db", "app.db"} {
		t.Run(dsn, func(t *testing.T) {
			db, err := sqlitestore.Open(dsn)
			require.NoError(t, err)
			defer db.Close()
			st, err := sqlstore.EngineOf(sqlitestore.New(db, sqlitestore.Config{}))
			require.NoError(t, err)
			require.NoError(t, st.Check(ctx))
			res, err := st.List(ctx, &store.ListParams{})
			require.NoError(t, err)
			require.Len(t, res.Messages, 1, "the message written through the first handle")
			var mode string
			require.NoError(t, db.QueryRow("PRAGMA journal_mode").Scan(&mode))
			require.Equal(t, "wal", mode, "Open's settings apply")
		})
	}
}

// Any other form is refused at Open, with the expected form, before a file is created.
func TestOpenRefusesOtherDSNForms(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, dsn, want string }{
		{"empty", "", "names no file"},
		{"scheme only", "sqlite://", "names no file"},
		{"file: only", "file:", "names no file"},
		{"parameters", "sqlite://" + filepath.Join(dir, "a.db") + "?_pragma=key('hunter2')", "has query parameters"},
		{"driver's own DSN", "file:" + filepath.Join(dir, "b.db") + "?mode=ro", "has query parameters"},
		{"bare path with parameters", filepath.Join(dir, "c.db") + "?cache=shared&hunter2", "has query parameters"},
		{"postgres URL", "postgres://app:hunter2@db:5432/app", `scheme "postgres" is not SQLite's`},
		{"mysql DSN after mysql://", "mysql://app:hunter2@tcp(db:3306)/app", `scheme "mysql" is not SQLite's`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := sqlitestore.Open(tc.dsn)
			require.Error(t, err)
			require.Nil(t, db)
			require.ErrorContains(t, err, tc.want)
			require.ErrorContains(t, err, "want sqlite:///path/to/app.db")
			require.NotContains(t, err.Error(), "hunter2")
		})
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries, "no file was created")
}
