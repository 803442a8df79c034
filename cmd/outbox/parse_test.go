package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseDSN(t *testing.T) {
	for _, tc := range []struct {
		dsn, backend, open string
	}{
		{"postgres://u:p@h:5432/db?sslmode=disable", "postgres", "postgres://u:p@h:5432/db?sslmode=disable"},
		{"postgresql://u@h/db", "postgres", "postgresql://u@h/db"},
		{"POSTGRES://u@h/db", "postgres", "POSTGRES://u@h/db"},
		{"mysql://root@tcp(127.0.0.1:3306)/test", "mysql", "root@tcp(127.0.0.1:3306)/test"},
		{"sqlite:///var/lib/app.db", "sqlite", "/var/lib/app.db"},
		{"sqlite://app.db", "sqlite", "app.db"},
		{"file:/var/lib/app.db", "sqlite", "/var/lib/app.db"},
	} {
		b, open, err := parseDSN(tc.dsn)
		require.NoError(t, err, tc.dsn)
		require.Equal(t, tc.backend, b.name, tc.dsn)
		require.Equal(t, tc.open, open, tc.dsn)
	}
}

// fixedTexts are the words of parseDSN's messages.
const fixedTexts = dsnForms + " the DSN has no scheme that names a database; want DSN scheme is not supported" +
	" a DSN that starts with needs after it a go-sql-driver DSN, such as mysql://user:pass@tcp(host:3306)/db"

// A refused DSN is named by its scheme at most: what follows may be a password.
func FuzzParseDSNKeepsSecrets(f *testing.F) {
	for _, s := range []string{"redis://u:secret@h", "u:secret@tcp(h)/db", "host=h password=secret", "mysql://", "sqlite://x?secret", "x://secret"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, dsn string) {
		_, _, err := parseDSN(dsn)
		if err == nil || strings.HasPrefix(strings.ToLower(dsn), "sqlite://") || strings.HasPrefix(strings.ToLower(dsn), "file:") {
			return // accepted, or a SQLite path, which holds no password
		}
		secret := dsn
		if _, rest, ok := strings.Cut(dsn, "://"); ok {
			secret = rest
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
