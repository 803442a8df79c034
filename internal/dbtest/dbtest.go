// Package dbtest gives each test a database of its own: a SQLite file, a Postgres schema or a
// MariaDB/MySQL database, dropped when the test ends.
//
// The servers are found through OUTBOX_TEST_POSTGRES and OUTBOX_TEST_MYSQL (DSNs), defaulting
// to the local servers that `make test` starts (.ci/services). When a server cannot be
// reached the test is skipped, except under CI (CI set), where it fails.
package dbtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"

	"github.com/outboxgo/outbox/store/mysqlstore"
	"github.com/outboxgo/outbox/store/pgstore"
	"github.com/outboxgo/outbox/store/sqlitestore"
)

// Default DSNs of the local test servers.
const (
	DefaultPostgres = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	DefaultMySQL    = "root@tcp(127.0.0.1:3306)/test"
)

// PostgresDSN is the DSN of the Postgres server for tests.
func PostgresDSN() string { return env("OUTBOX_TEST_POSTGRES", DefaultPostgres) }

// MySQLDSN is the DSN of the MySQL or MariaDB server for tests.
func MySQLDSN() string { return env("OUTBOX_TEST_MYSQL", DefaultMySQL) }

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// unavailable skips the test, or fails it under CI, where every server must be there.
func unavailable(t testing.TB, what string, err error) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not reachable under CI (make test starts it with .ci/services): %v", what, err)
	}
	t.Skipf("%s is not reachable; skipping (make test starts it with .ci/services): %v", what, err)
}

// Name returns a fresh identifier for a schema or database.
func Name(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

func ping(db *sql.DB) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return db.PingContext(ctx)
}

// SQLite opens a new SQLite file in the test's temporary directory.
func SQLite(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sqlitestore.Open(filepath.Join(t.TempDir(), "outbox.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// Postgres opens the test server and creates a schema for this test; the outbox table of
// the test is schema + ".outbox".
func Postgres(t testing.TB) (db *sql.DB, schema string) {
	t.Helper()
	db, err := pgstore.Open(PostgresDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := ping(db); err != nil {
		unavailable(t, "Postgres", err)
	}
	schema = Name("outbox_test")
	if _, err := db.Exec("CREATE SCHEMA " + pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := db.Exec("DROP SCHEMA " + pgx.Identifier{schema}.Sanitize() + " CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
		// The log reader's slots and publications are named after the schema (pgstore.Names).
		if err := DropPostgresLog(db, "", schema+"_"); err != nil {
			t.Errorf("drop the log reader's slots of schema %s: %v", schema, err)
		}
	})
	return db, schema
}

// DropPostgresLog drops the replication slots, and the publications of the connected
// database, whose names start with prefix and, when database is set, the slots of that
// database. An unused slot pins WAL forever, and blocks DROP DATABASE.
func DropPostgresLog(db *sql.DB, database, prefix string) error {
	var errs []error
	for range 50 {
		var active, left int
		err := db.QueryRow(`SELECT count(pg_terminate_backend(active_pid)), count(*) FROM pg_replication_slots
			WHERE ($1 <> '' AND left(slot_name, length($1)) = $1) OR ($2 <> '' AND database = $2)`, prefix, database).Scan(&active, &left)
		if err != nil {
			return err
		}
		if left == 0 {
			break
		}
		_, err = db.Exec(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
			WHERE NOT active AND (($1 <> '' AND left(slot_name, length($1)) = $1) OR ($2 <> '' AND database = $2))`, prefix, database)
		if err != nil {
			errs = append(errs, err)
		}
		if active > 0 || err != nil {
			time.Sleep(100 * time.Millisecond) // a terminated sender takes a moment to let go
		}
	}
	if prefix != "" {
		rows, err := db.Query("SELECT pubname FROM pg_publication WHERE left(pubname, length($1)) = $1", prefix)
		if err != nil {
			return err
		}
		var pubs []string
		for rows.Next() {
			var p string
			rows.Scan(&p)
			pubs = append(pubs, p)
		}
		rows.Close()
		for _, p := range pubs {
			if _, err := db.Exec("DROP PUBLICATION IF EXISTS " + pgx.Identifier{p}.Sanitize()); err != nil {
				return err
			}
		}
	}
	var left int
	if err := db.QueryRow(`SELECT count(*) FROM pg_replication_slots WHERE ($1 <> '' AND left(slot_name, length($1)) = $1) OR ($2 <> '' AND database = $2)`, prefix, database).Scan(&left); err != nil || left == 0 {
		return err
	}
	return fmt.Errorf("%d replication slots left: %v", left, errors.Join(errs...))
}

// MySQL creates a database for this test on the test server and opens it.
func MySQL(t testing.TB) (db *sql.DB, dsn string) {
	t.Helper()
	admin, err := mysqlstore.Open(MySQLDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	if err := ping(admin); err != nil {
		unavailable(t, "MySQL/MariaDB", err)
	}
	name := Name("outbox_test")
	if _, err := admin.Exec("CREATE DATABASE `" + name + "`"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec("DROP DATABASE IF EXISTS `" + name + "`"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	cfg, err := mysql.ParseDSN(MySQLDSN())
	if err != nil {
		t.Fatal(err)
	}
	cfg.DBName = name
	dsn = cfg.FormatDSN()
	db, err = mysqlstore.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, dsn
}

// MigrationFile is one migration step, as the store applies it.
type MigrationFile struct {
	Version int
	Name    string
	SQL     string
}

// RequireMigrationFiles checks that dir holds each step as NNNN_name.up.sql with exactly the
// SQL Migrate applies, or rewrites the files when update is set.
func RequireMigrationFiles(t testing.TB, dir string, steps []MigrationFile, update bool) {
	t.Helper()
	if len(steps) == 0 {
		t.Fatal("no migrations")
	}
	for _, m := range steps {
		path := filepath.Join(dir, fmt.Sprintf("%04d_%s.up.sql", m.Version, m.Name))
		if update {
			if err := os.WriteFile(path, []byte(m.SQL), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != m.SQL {
			t.Fatalf("%s is missing or stale; rewrite it by running this test with -update", path)
		}
	}
}
