package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/outboxgo/outbox/store"
)

// parkedMessage is a parked message as parked prints it.
type parkedMessage struct {
	ID        string    `json:"id"`
	Topic     string    `json:"topic"`
	Key       string    `json:"key"`
	Attempts  int       `json:"attempts"`
	LastError string    `json:"last_error"`
	WrittenAt time.Time `json:"written_at"`
}

type parkedReport struct {
	Messages []parkedMessage `json:"messages"`
	// Truncated is true when more parked messages match than --limit shows.
	Truncated bool `json:"truncated"`
}

func setupParked(fs *flag.FlagSet) func(context.Context, *app) error {
	limit := fs.Int("limit", 100, "show at most `n` messages, oldest first")
	topic := fs.String("topic", "", "only messages of this `topic`")
	key := fs.String("key", "", "only messages of this `key`")
	return func(ctx context.Context, a *app) error {
		if *limit <= 0 {
			return usagef("parked: --limit must be positive, got %d", *limit)
		}
		if err := a.open(ctx, true, true); err != nil {
			return err
		}
		// One more than shown tells whether there are more.
		res, err := a.st.List(ctx, &store.ListParams{State: store.Parked, Topic: *topic, Key: *key, Limit: *limit + 1})
		if err != nil {
			return err
		}
		r := parkedReport{Messages: []parkedMessage{}}
		for i, m := range res.Messages {
			if i == *limit {
				r.Truncated = true
				break
			}
			r.Messages = append(r.Messages, parkedMessage{ID: m.ID, Topic: m.Topic, Key: m.Key, Attempts: m.Attempts, LastError: m.LastError, WrittenAt: m.CreatedAt.UTC()})
		}
		return a.print(r, func(p *printer) {
			if len(r.Messages) == 0 {
				p.line("no parked messages")
				return
			}
			p.row("ID", "TOPIC", "KEY", "ATTEMPTS", "WRITTEN AT", "LAST ERROR")
			for _, m := range r.Messages {
				p.row(m.ID, m.Topic, orDash(m.Key), strconv.Itoa(m.Attempts), m.WrittenAt.Format(time.RFC3339), orDash(m.LastError))
			}
			if r.Truncated {
				p.line("(the first %d; more are parked: raise --limit to see them)", *limit)
			}
		})
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// repeated is a flag that may be given several times.
type repeated []string

func (r *repeated) String() string { return strings.Join(*r, ",") }

func (r *repeated) Set(s string) error {
	*r = append(*r, s)
	return nil
}

const requeueSelectors = "--id (repeatable), --topic and/or --key, or --all"

func setupRequeue(fs *flag.FlagSet) func(context.Context, *app) error {
	var ids repeated
	fs.Var(&ids, "id", "requeue the parked message with this `id` (repeatable)")
	topic := fs.String("topic", "", "requeue the parked messages of this `topic`")
	key := fs.String("key", "", "requeue the parked messages of this `key` (with --topic: of both)")
	all := fs.Bool("all", false, "requeue every parked message")
	return func(ctx context.Context, a *app) error {
		params := &store.RequeueParams{IDs: ids, Topic: *topic, Key: *key, All: *all}
		switch {
		case *all && (len(ids) > 0 || *topic != "" || *key != ""):
			return usagef("requeue: --all selects every parked message; leave out --id, --topic and --key, or --all")
		case len(ids) > 0 && (*topic != "" || *key != ""):
			return usagef("requeue: select by --id, or by --topic and/or --key, not both")
		case len(ids) == 0 && *topic == "" && *key == "" && !*all:
			return usagef("requeue: say which parked messages to requeue: %s", requeueSelectors)
		}
		if err := a.open(ctx, true, true); err != nil {
			return err
		}
		params.IDs = slices.Compact(slices.Sorted(slices.Values(params.IDs)))
		n, err := a.st.Requeue(ctx, params)
		if errors.Is(err, store.ErrNoSelection) {
			return usagef("requeue: say which parked messages to requeue: %s", requeueSelectors)
		}
		if err != nil {
			return err
		}
		// A topic or key that matches nothing is a query with no answer; an id is the
		// operator's word that the message is there and parked: one that is not is an error.
		unmatched := int64(len(params.IDs)) - n
		report := map[string]int64{"requeued": n}
		if len(params.IDs) > 0 {
			report["ids_not_parked"] = unmatched
		}
		if err := a.print(report, func(p *printer) {
			switch {
			case n == 0 && len(params.IDs) == 0:
				p.line("requeued 0 parked messages: none matched")
			case n == 1:
				p.line("requeued 1 parked message: it is pending again, due now, with its attempts reset")
			case n > 1:
				p.line("requeued %d parked messages: they are pending again, due now, with their attempts reset", n)
			}
		}); err != nil {
			return err
		}
		if unmatched > 0 {
			which := fmt.Sprintf("%d of the %d ids given with --id named no parked message", unmatched, len(params.IDs))
			switch {
			case len(params.IDs) == 1:
				which = "the id given with --id named no parked message"
			case n == 0:
				which = fmt.Sprintf("none of the %d ids given with --id named a parked message", len(params.IDs))
			}
			return fmt.Errorf("%s: there is no such id in table %s, or its message is pending or delivered (`outbox parked` lists the parked ones)", which, a.table)
		}
		return nil
	}
}

func plural(n int64, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

func setupPurge(fs *flag.FlagSet) func(context.Context, *app) error {
	olderThan := fs.String("older-than", "", "delete delivered messages delivered longer ago than this `duration`: Go's form (36h, 90m) or days (7d, 1d12h)")
	return func(ctx context.Context, a *app) error {
		if *olderThan == "" {
			return usagef("purge: --older-than is required, such as --older-than 7d")
		}
		d, err := parseAge(*olderThan)
		if err != nil {
			return usagef("purge: --older-than %q: %v", *olderThan, err)
		}
		if err := a.open(ctx, true, true); err != nil {
			return err
		}
		n, err := a.st.Purge(ctx, &store.PurgeParams{OlderThan: d})
		if err != nil {
			return err
		}
		return a.print(map[string]any{"deleted": n, "older_than_seconds": d.Seconds()}, func(p *printer) {
			p.line("deleted %d delivered %s older than %s", n, plural(n, "message"), *olderThan)
		})
	}
}

// parseAge parses a positive Go duration, which may start with a number of days ("7d",
// "1d12h").
func parseAge(s string) (time.Duration, error) {
	var days time.Duration
	if n, rest, ok := strings.Cut(s, "d"); ok {
		v, err := strconv.ParseUint(n, 10, 32)
		if err != nil || v > 100*365 {
			return 0, errors.New("want a Go duration (36h, 90m) or days (7d, 1d12h)")
		}
		days, s = time.Duration(v)*24*time.Hour, rest
	}
	var d time.Duration
	if s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, errors.New("want a Go duration (36h, 90m) or days (7d, 1d12h)")
		}
	}
	if d+days <= 0 {
		return 0, errors.New("must be positive")
	}
	return d + days, nil
}

type migrationStep struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	SQL     string `json:"sql"`
}

func setupMigrate(fs *flag.FlagSet) func(context.Context, *app) error {
	printOnly := fs.Bool("print", false, "print the SQL of every migration step for this database and table, without connecting")
	return func(ctx context.Context, a *app) error {
		if *printOnly {
			return a.printMigrations()
		}
		if err := a.open(ctx, true, false); err != nil {
			return err
		}
		if err := a.st.Migrate(ctx); err != nil {
			return a.explain(err)
		}
		return a.print(map[string]any{"database": a.be.name, "table": a.table, "migrated": true}, func(p *printer) {
			p.line("migrated table %s (%s)", a.table, a.be.name)
		})
	}
}

func (a *app) printMigrations() error {
	if err := a.open(context.Background(), false, false); err != nil {
		return err
	}
	steps, err := a.st.Migrations()
	if err != nil {
		return err
	}
	out := make([]migrationStep, len(steps))
	for i, m := range steps {
		out[i] = migrationStep{m.Version, m.Name, m.SQL}
	}
	note := "migrate applies the steps not yet recorded in " + a.table + "_migrations"
	if a.be.afterMigrate != nil {
		note += "; then it " + a.be.afterMigrate(a.st)
	}
	return a.print(map[string]any{"database": a.be.name, "table": a.table, "migrations": out, "note": note}, func(p *printer) {
		p.line("-- outbox migrations for %s, table %s.", a.be.name, a.table)
		p.line("-- %s.", note)
		for _, m := range out {
			p.line("\n-- %04d_%s\n%s", m.Version, m.Name, strings.TrimRight(m.SQL, "\n"))
		}
	})
}
