package dispatcher_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/dispatcher/outboxtest"
)

// The plain SQL in testdata/ gives a fixed id, and says in a comment how to have the
// database make one: with that expression in its place, each run of the statement writes a
// message with a new UUID, and the dispatcher publishes it under that id.
func TestPlainSQLMakesItsOwnIDs(t *testing.T) {
	for name, tc := range map[string]struct {
		newDB func(*testing.T) sharedDB
		id    string // the expression the file shows
	}{
		"sqlite":   {sharedSQLite, `lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) || substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))`},
		"postgres": {sharedPostgres, `gen_random_uuid()::text`},
		"mysql":    {sharedMySQL, `UUID()`},
	} {
		t.Run(name, func(t *testing.T) {
			script, err := os.ReadFile("../testdata/insert_message." + name + ".sql")
			require.NoError(t, err)
			var comments []string
			for line := range strings.Lines(string(script)) {
				if text, ok := strings.CutPrefix(strings.TrimSpace(line), "--"); ok {
					comments = append(comments, text)
				}
			}
			require.Contains(t, strings.Join(strings.Fields(strings.Join(comments, " ")), " "), tc.id, "the file shows the expression")
			const fixed = "'0190f3a2-7b1c-7000-8000-00000000a001'"
			require.Contains(t, string(script), fixed)

			shared := tc.newDB(t)
			_, db, st := shared.prepare(t)
			stmts := strings.ReplaceAll(strings.ReplaceAll(string(script), "{{table}}", st.Table()), fixed, tc.id)
			const runs = 3
			tx, err := db.BeginTx(context.Background(), nil)
			require.NoError(t, err)
			for range runs {
				for _, stmt := range strings.Split(stmts, ";\n") {
					if lines := strings.TrimSpace(stripComments(stmt)); lines != "" {
						_, err := tx.Exec(lines)
						require.NoError(t, err, lines)
					}
				}
			}
			require.NoError(t, tx.Commit())

			pub := outboxtest.NewPublisher()
			require.Equal(t, runs, outboxtest.Drain(t, st, pub))
			seen := map[string]bool{}
			for _, m := range pub.Messages("payments") {
				id, err := uuid.Parse(m.UUID)
				require.NoError(t, err, "id %q", m.UUID)
				require.Equal(t, id.String(), m.UUID, "the canonical form, lower case")
				require.Equal(t, uuid.RFC4122, id.Variant())
				if name == "sqlite" {
					require.Equal(t, uuid.Version(4), id.Version(), "the file says version 4")
				}
				require.False(t, seen[m.UUID], "id %s made twice", m.UUID)
				seen[m.UUID] = true
			}
		})
	}
}
