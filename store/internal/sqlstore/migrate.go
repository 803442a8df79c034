package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"strings"
	"time"
)

// Migrations returns the schema steps for the configured table, for use with your own
// migration tool. [Store.Migrate] applies them.
func (s *Store) Migrations() ([]Migration, error) { return s.d.migrations(s.t) }

// Migrate creates or upgrades the outbox table. It records applied steps in a table named
// after the outbox table with a "_migrations" suffix, and is safe to run at every start. It
// uses its own connection and transactions: never call it inside a transaction of yours.
func (s *Store) Migrate(ctx context.Context) error {
	steps, err := s.Migrations()
	if err != nil {
		return err
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	defer conn.Close()
	unlock, err := s.lockSession(ctx, conn, "migrate", time.Minute)
	if err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	defer unlock()

	versions := s.t.Related("migrations")
	if _, err := conn.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+versions+
		" (version INTEGER PRIMARY KEY, name VARCHAR(255) NOT NULL, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"); err != nil {
		return fmt.Errorf("outbox: migrate: create %s: %w", versions, err)
	}
	applied := map[int]bool{}
	rows, err := conn.QueryContext(ctx, "SELECT version FROM "+versions)
	if err != nil {
		return fmt.Errorf("outbox: migrate: read %s: %w", versions, err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return err
		}
		applied[v] = true
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for _, m := range steps {
		if applied[m.Version] {
			continue
		}
		if err := s.apply(ctx, conn, versions, m); err != nil {
			return fmt.Errorf("outbox: migrate: step %d (%s): %w", m.Version, m.Name, err)
		}
	}
	if s.hooks.Migrate != nil {
		if err := s.hooks.Migrate(ctx, s, conn); err != nil {
			return fmt.Errorf("outbox: migrate: %w", err)
		}
	}
	if err := s.checkLogOnly(ctx, conn); err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	return nil
}

// apply runs one step in a transaction (MySQL commits DDL at once; its steps are written to be
// safe to run again).
func (s *Store) apply(ctx context.Context, conn *sql.Conn, versions string, m Migration) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, stmt := range splitStatements(m.SQL) {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}
	b := builder{d: s.d}
	q := "INSERT INTO " + versions + " (version, name) VALUES (" + b.arg(m.Version) + ", " + b.arg(m.Name) + ")"
	if _, err := tx.ExecContext(ctx, q, b.args...); err != nil {
		return err
	}
	return tx.Commit()
}

// lockSession takes the table's lock for purpose on conn, waiting at most wait, and returns
// its release. SQLite needs none: it runs one writer at a time.
func (s *Store) lockSession(ctx context.Context, conn *sql.Conn, purpose string, wait time.Duration) (func(), error) {
	if s.hooks.Lock == nil {
		return func() {}, nil
	}
	unlock, ok, err := s.hooks.Lock(ctx, conn, s, purpose, wait)
	if err != nil {
		return nil, fmt.Errorf("take lock %s: %w", purpose, err)
	}
	if !ok {
		return nil, fmt.Errorf("take lock %s: not granted within %v", purpose, wait)
	}
	return unlock, nil
}

// Discard makes database/sql close conn instead of reusing it, so that a session lock or a
// LISTEN it may still hold dies with it.
func Discard(conn *sql.Conn) {
	conn.Raw(func(any) error { return driver.ErrBadConn })
}

// splitStatements splits a migration into statements at semicolons that end a line, dropping
// comment-only parts.
func splitStatements(sqlText string) []string {
	var out []string
	for _, part := range strings.Split(sqlText, ";\n") {
		var code []string
		for _, line := range strings.Split(part, "\n") {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "--") {
				code = append(code, line)
			}
		}
		if stmt := strings.TrimSuffix(strings.TrimSpace(strings.Join(code, "\n")), ";"); stmt != "" {
			out = append(out, stmt)
		}
	}
	return out
}
