package mysqlstore_test

import (
	"context"
	"strings"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store/mysqlstore"
)

// Open takes go-sql-driver's DSN bare or after mysql://, as the operator command does, and
// both reach the database as the DSN's user.
func TestOpenTakesTheDriversDSNBareOrAfterMySQLScheme(t *testing.T) {
	_, dsn := dbtest.MySQL(t)
	cfg, err := mysql.ParseDSN(dsn)
	require.NoError(t, err)
	for _, tc := range []struct{ name, dsn string }{
		{"bare", dsn},
		{"after mysql://", "mysql://" + dsn},
		{"after MySQL://", "MySQL://" + dsn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := mysqlstore.Open(tc.dsn)
			require.NoError(t, err)
			defer db.Close()
			var user, schema string
			require.NoError(t, db.QueryRowContext(context.Background(), "SELECT SUBSTRING_INDEX(USER(), '@', 1), DATABASE()").Scan(&user, &schema))
			require.Equal(t, cfg.User, user)
			require.Equal(t, cfg.DBName, schema)
		})
	}
}

// Any other form is refused at Open, with the expected form, and the password hidden.
func TestOpenRefusesOtherDSNForms(t *testing.T) {
	for _, tc := range []struct{ name, dsn, want string }{
		{"empty", "", "mysql DSN is empty"},
		{"scheme only", "mysql://", "mysql DSN is empty"},
		{"postgres URL", "postgres://app:hunter2@db:5432/app", `scheme "postgres" is not MySQL's`},
		{"sqlite URL", "sqlite:///var/lib/app.db", `scheme "sqlite" is not MySQL's`},
		{"URL-style address", "mysql://app:hunter2@db:3306/app", "network 'db:3306'"},
		{"bare URL-style address", "app:hunter2@db/app", "network 'db'"},
		{"unclosed address", "mysql://app:hunter2@tcp(db:3306/app", "missing closing brace"},
		{"no database slash", "app:hunter2@tcp(db:3306)", "missing the slash"},
		{"a file path", "/var/lib/app.db", "mysql DSN"},
		{"password in the network name", "app:hunter2@hunter2/app", "mysql DSN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := mysqlstore.Open(tc.dsn)
			require.Error(t, err)
			require.Nil(t, db)
			require.ErrorContains(t, err, tc.want)
			require.ErrorContains(t, err, "want mysql://user:pass@tcp(host:3306)/db")
			require.NotContains(t, err.Error(), "hunter2")
		})
	}
}

// fixedTexts are the words of Open's messages.
var fixedTexts = []string{"outbox: mysql DSN", "want mysql://user:pass@tcp(host:3306)/db", "or the same without mysql://",
	"(go-sql-driver/mysql's form, with tcp(...) around the address)", "is not MySQL's", "invalid DSN"}

// Whatever the rest of the DSN, a refused DSN's message does not show its password.
func FuzzOpenKeepsPassword(f *testing.F) {
	for _, s := range [][2]string{{"hunter2", "db:3306/app"}, {"hunter2", "hunter2/x"}, {"hunter2x", "tcp(db/app"}, {"hunter2", "tcp(db)/app?tls=hunter2"}, {"hunter2", "tcp(db)/app?timeout=hunter2"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, password, rest string) {
		// The driver reads the password up to the last @ before the last slash.
		if len(password) < 6 || strings.ContainsAny(password, "@/") || strings.Contains(rest, "@") {
			return
		}
		for _, prefix := range []string{"", "mysql://"} {
			db, err := mysqlstore.Open(prefix + "app:" + password + "@" + rest)
			if err == nil {
				db.Close()
				continue
			}
			msg := err.Error()
			for _, s := range fixedTexts {
				msg = strings.ReplaceAll(msg, s, "")
			}
			if strings.Contains(msg, password) {
				t.Fatalf("the message %q shows the password %q", err, password)
			}
		}
	})
}
