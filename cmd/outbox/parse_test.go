package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The program picks the database by the DSN's scheme and hands the DSN as it is to that
// store's Open, which takes the same forms in an application.
func TestParseDSN(t *testing.T) {
	for _, tc := range []struct {
		dsn, backend string
	}{
		{"postgres://u:p@h:5432/db?sslmode=disable", "postgres"},
		{"postgresql://u@h/db", "postgres"},
		{"POSTGRES://u@h/db", "postgres"},
		{"mysql://root@tcp(127.0.0.1:3306)/test", "mysql"},
		{"MySQL://root:pw@unix(/run/mysqld.sock)/test?timeout=5s", "mysql"},
		{"sqlite:///var/lib/app.db", "sqlite"},
		{"sqlite://app.db", "sqlite"},
		{"file:/var/lib/app.db", "sqlite"},
	} {
		b, err := parseDSN(tc.dsn)
		require.NoError(t, err, tc.dsn)
		require.Equal(t, tc.backend, b.name, tc.dsn)
		db, err := b.open(tc.dsn) // connects only when used
		require.NoError(t, err, tc.dsn)
		require.NoError(t, db.Close())
	}
}

// fixedTexts are the words of the messages that refuse a DSN, the program's and the stores'.
const fixedTexts = dsnForms + " the DSN has no scheme that names a database; want DSN scheme is not supported" +
	" outbox: postgres DSN: cannot parse failed to parse as URL keyword/value want postgres://user:pass@host:5432/db?sslmode=disable (or postgresql://), or libpq's key=value form" +
	" outbox: mysql DSN is empty: invalid DSN: want mysql://user:pass@tcp(host:3306)/db (go-sql-driver/mysql's form, with tcp(...) around the address), or the same without mysql://"

// A refused DSN is named by its scheme at most: what follows may be a password.
func FuzzParseDSNKeepsSecrets(f *testing.F) {
	for _, s := range []string{"redis://u:secret@h", "u:secret@tcp(h)/db", "host=h password=secret", "mysql://", "sqlite://x?secret", "x://secret",
		"mysql://u:secret@h:3306/db", "mysql://u:secret@secret/db", "postgres://u:secret@[::1", "postgresql://u:secret@h:notaport/db"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, dsn string) {
		b, err := parseDSN(dsn)
		if err == nil {
			db, openErr := b.open(dsn)
			if openErr == nil {
				db.Close()
				return
			}
			err = openErr
		}
		if strings.HasPrefix(strings.ToLower(dsn), "sqlite://") || strings.HasPrefix(strings.ToLower(dsn), "file:") {
			return // a SQLite path, which holds no password
		}
		// Without a scheme, the whole DSN may be a secret (password=...); with one, the
		// password of user:pass@, if it has one.
		secret := dsn
		if _, rest, ok := strings.Cut(dsn, "://"); ok {
			secret = ""
			if userinfo, _, ok := strings.Cut(rest, "@"); ok {
				_, secret, _ = strings.Cut(userinfo, ":")
			}
		}
		msg := strings.ReplaceAll(err.Error(), dsnForms, "")
		if len(secret) >= 6 && strings.Contains(msg, secret) && !strings.Contains(fixedTexts, secret) {
			t.Fatalf("the message %q shows %q", msg, secret)
		}
	})
}

func TestParseAge(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "36h": 36 * time.Hour, "90m": 90 * time.Minute, "1ms": time.Millisecond, "0d1s": time.Second,
	} {
		got, err := parseAge(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "0", "0d", "-1h", "7 days", "d", "1.5d", "7dd", "99999999d", "1w"} {
		_, err := parseAge(in)
		require.Error(t, err, in)
	}
}
