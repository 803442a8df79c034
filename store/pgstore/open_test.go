package pgstore_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/store/pgstore"
)

// Open takes the URL that the operator command takes, under either scheme, and libpq's
// key=value form, and each reaches the database as the DSN's user.
func TestOpenTakesURLsAndKeyValues(t *testing.T) {
	dbtest.Postgres(t) // skips when the server is not there
	dsn := dbtest.PostgresDSN()
	cfg, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	other, upper := *u, *u
	other.Scheme = map[string]string{"postgres": "postgresql", "postgresql": "postgres"}[strings.ToLower(u.Scheme)]
	upper.Scheme = strings.ToUpper(u.Scheme)
	keyValues := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", cfg.Host, cfg.Port, cfg.User, cfg.Database)
	if cfg.Password != "" {
		keyValues += " password='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(cfg.Password) + "'"
	}
	for _, tc := range []struct{ name, dsn string }{
		{"URL", dsn},
		{"URL under the other scheme", other.String()},
		{"URL with the scheme in capitals", upper.String()},
		{"key=value", keyValues},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := pgstore.Open(tc.dsn)
			require.NoError(t, err)
			defer db.Close()
			var user, database string
			require.NoError(t, db.QueryRowContext(context.Background(), "SELECT current_user, current_database()").Scan(&user, &database))
			require.Equal(t, cfg.User, user)
			require.Equal(t, cfg.Database, database)
		})
	}
}

// Any other form is refused at Open, with the expected forms, and the password hidden.
func TestOpenRefusesOtherDSNForms(t *testing.T) {
	for _, tc := range []struct{ name, dsn, want string }{
		{"mysql DSN after mysql://", "mysql://app:hunter2@tcp(db:3306)/app", `scheme "mysql" is not Postgres's`},
		{"bare mysql DSN", "app:hunter2@tcp(db:3306)/app", "keyword/value"},
		{"sqlite URL", "sqlite:///var/lib/app.db", `scheme "sqlite" is not Postgres's`},
		{"a file path", "/var/lib/app.db", "keyword/value"},
		{"another scheme", "redis://app:hunter2@cache:6379/0", `scheme "redis" is not Postgres's`},
		{"bad URL", "postgres://app:hunter2@[::1", "failed to parse as URL"},
		{"bad key=value", "host=db password=hunter2 sslmode", "keyword/value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, err := pgstore.Open(tc.dsn)
			require.Error(t, err)
			require.Nil(t, db)
			require.ErrorContains(t, err, tc.want)
			require.ErrorContains(t, err, "want postgres://user:pass@host:5432/db")
			require.NotContains(t, err.Error(), "hunter2")
		})
	}
}
