package dispatcher_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
)

// A program that does not use this library writes a message with the plain SQL in testdata/;
// the dispatcher publishes it like any other.
func TestMessagesWrittenWithPlainSQLArePublished(t *testing.T) {
	for name, newDB := range map[string]func(*testing.T) sharedDB{"sqlite": sharedSQLite, "postgres": sharedPostgres, "mysql": sharedMySQL} {
		t.Run(name, func(t *testing.T) {
			shared := newDB(t)
			_, db, st := shared.prepare(t)
			script, err := os.ReadFile("../testdata/insert_message." + name + ".sql")
			require.NoError(t, err)
			tx, err := db.BeginTx(context.Background(), nil)
			require.NoError(t, err)
			for _, stmt := range strings.Split(strings.ReplaceAll(string(script), "{{table}}", st.Table()), ";\n") {
				if lines := strings.TrimSpace(stripComments(stmt)); lines != "" {
					_, err := tx.Exec(lines)
					require.NoError(t, err, lines)
				}
			}
			require.NoError(t, tx.Commit())

			pub := outboxtest.NewPublisher()
			require.Equal(t, 1, outboxtest.Drain(t, st, pub))
			m := pub.Messages("payments")[0]
			require.Equal(t, "0190f3a2-7b1c-7000-8000-00000000a001", m.UUID)
			require.Equal(t, "pay-42", m.Metadata.Get(publisher.MetadataKey))
			require.Equal(t, "PaymentCompleted", m.Metadata.Get("event_type"))
			require.JSONEq(t, `{"externalId":"pay-42","amount":"12.50","paymentStatus":"Completed"}`, string(m.Payload))
			outboxtest.RequireWritten(t, st, nil, outboxtest.Want{Key: "pay-42", State: store.Delivered})
		})
	}
}

func stripComments(stmt string) string {
	var keep []string
	for _, line := range strings.Split(stmt, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}
