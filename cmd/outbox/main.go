package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/outboxgo/outbox/store"
	"github.com/outboxgo/outbox/store/pgstore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed, or found the outbox unusable
	exitUsage   = 2 // the command line is wrong; nothing was done
)

// usageError is a wrong command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// errShown is a usage error that the flag package has printed already.
var errShown = errors.New("usage error shown")

// problem is an error with what it means for the operator, printed on a line before it.
type problem struct {
	what string
	err  error
	// known is the store's sentinel that what explains, if any: the line after what leaves
	// out its words, which would say the same again.
	known error
}

func (p *problem) Error() string { return p.what + ": " + p.err.Error() }
func (p *problem) Unwrap() error { return p.err }

// detail is the error without the "outbox: " prefix and the words of p.known.
func (p *problem) detail() string {
	msg := trimPrefix(p.err)
	if p.known != nil {
		msg = strings.TrimPrefix(msg, trimPrefix(p.known)+": ")
	}
	return msg
}

// run runs the command line args and returns the exit code. Results go to stdout, errors and
// the stores' logs to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr}
	err := a.main(ctx, args)
	var (
		usage *usageError
		prob  *problem
	)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errShown):
		return exitUsage
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "outbox: %s\nRun 'outbox -h' for usage.\n", usage.msg)
		return exitUsage
	case errors.As(err, &prob):
		fmt.Fprintf(stderr, "outbox: %s\noutbox: %s\n", prob.what, prob.detail())
	default:
		fmt.Fprintf(stderr, "outbox: %s\n", trimPrefix(err))
	}
	return exitFailure
}

// trimPrefix drops the "outbox: " that the library's errors start with: the program's name
// is printed once, before it.
func trimPrefix(err error) string { return strings.TrimPrefix(err.Error(), "outbox: ") }

// globals are the flags of every command.
type globals struct {
	dsn   string
	table string
	json  bool
}

// register defines the global flags on fs, so that they may come before the command or
// after it. They are set through functions: a second definition must not reset a value the
// first one parsed, and the DSN, which may hold a password, is never printed as a default.
func (g *globals) register(fs *flag.FlagSet) {
	fs.Func("dsn", "the database `DSN`: postgres://..., mysql://<go-sql-driver DSN>, sqlite://<path> or file:<path> (default $OUTBOX_DSN)",
		func(s string) error { g.dsn = s; return nil })
	fs.Func("table", "the outbox `table`, optionally schema-qualified (default \""+store.DefaultTable+"\")",
		func(s string) error { g.table = s; return nil })
	fs.BoolFunc("json", "print one JSON document instead of text", func(s string) error {
		v, err := strconv.ParseBool(s)
		g.json = v
		return err
	})
}

// command is one of the program's commands.
type command struct {
	name, args, summary string
	// setup defines the command's flags on fs and returns what runs it.
	setup func(fs *flag.FlagSet) func(ctx context.Context, a *app) error
}

var commands = []command{
	{"status", "", "show pending, parked and delivered messages, the lag, and the change log reader", setupStatus},
	{"parked", "[--limit n] [--topic t] [--key k]", "list parked messages with their last error", setupParked},
	{"requeue", "--id id... | --topic t [--key k] | --key k | --all", "make parked messages pending again", setupRequeue},
	{"purge", "--older-than 7d", "delete delivered messages older than a duration", setupPurge},
	{"migrate", "[--print]", "create or upgrade the outbox table (--print: show its SQL)", setupMigrate},
	{"serve", "[--addr 127.0.0.1:8080] [--read-only]", "serve the operator console in the browser", setupServe},
}

// app is one run of the program.
type app struct {
	g              globals
	stdout, stderr io.Writer

	be    backend
	dsn   string // the DSN, which the backend's Open takes as it is
	db    *sql.DB
	st    outboxStore
	table string // the table's unquoted, qualified name
}

func (a *app) main(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("outbox", flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.Usage = func() { a.usage(fs) }
	a.g.register(fs)
	if err := fs.Parse(args); err != nil {
		return flagError(err)
	}
	if fs.NArg() == 0 {
		a.usage(fs)
		return errShown
	}
	name := fs.Arg(0)
	i := slices.IndexFunc(commands, func(c command) bool { return c.name == name })
	if i < 0 {
		return usagef("unknown command %q; commands: %s", name, commandNames())
	}
	cmd := commands[i]
	cfs := flag.NewFlagSet("outbox "+cmd.name, flag.ContinueOnError)
	cfs.SetOutput(a.stderr)
	runCmd := cmd.setup(cfs)
	a.g.register(cfs)
	cfs.Usage = func() {
		fmt.Fprintf(a.stderr, "Usage: outbox [global flags] %s\n\n%s.\n\nFlags:\n", strings.TrimSpace(cmd.name+" "+cmd.args), capitalize(cmd.summary))
		cfs.PrintDefaults()
	}
	if err := cfs.Parse(fs.Args()[1:]); err != nil {
		return flagError(err)
	}
	if cfs.NArg() > 0 {
		return usagef("%s: unexpected argument %q", cmd.name, cfs.Arg(0))
	}
	if a.g.dsn == "" {
		a.g.dsn = os.Getenv("OUTBOX_DSN")
	}
	if a.g.dsn == "" {
		return usagef("no database: set --dsn or OUTBOX_DSN (%s)", dsnForms)
	}
	var err error
	if a.be, err = parseDSN(a.g.dsn); err != nil {
		return err
	}
	a.dsn = a.g.dsn
	defer func() {
		if a.db != nil {
			a.db.Close()
		}
	}()
	return runCmd(ctx, a)
}

func flagError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return errShown
}

func commandNames() string {
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func (a *app) usage(fs *flag.FlagSet) {
	w := a.stderr
	fmt.Fprint(w, "Usage: outbox [global flags] <command> [flags]\n\nInspect and repair a transactional outbox.\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nGlobal flags (also accepted after the command):\n")
	fs.PrintDefaults()
	fmt.Fprint(w, "\nRun 'outbox <command> -h' for a command's flags.\n")
}

// open opens the database and the store. Unless it is only to print SQL, it connects:
// every command but migrate then checks that the outbox is usable.
func (a *app) open(ctx context.Context, connect, check bool) error {
	db, err := a.be.open(a.dsn) // connects only when used
	if err != nil {
		return &usageError{trimPrefix(err)}
	}
	a.db = db
	st, err := a.be.new(db, pgstore.Config{Table: a.g.table, Logger: slog.New(slog.NewTextHandler(a.stderr, nil))})
	if errors.Is(err, store.ErrInvalidTable) {
		return &usageError{trimPrefix(err)}
	}
	if err != nil {
		return err
	}
	a.st, a.table = st, st.QualifiedName()
	switch {
	case !connect:
		return nil
	case !check: // migrate, which creates a database that is not there yet
		if err := db.PingContext(ctx); err != nil {
			return fmt.Errorf("cannot reach the %s database: %w", a.be.name, err)
		}
		return nil
	}
	if a.be.exists != nil {
		if err := a.be.exists(a.dsn); err != nil {
			return err
		}
	}
	return a.explain(st.Check(ctx))
}

// explain says what an error of the store's Check means for the operator.
func (a *app) explain(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotMigrated):
		return &problem{fmt.Sprintf("table %s is missing or not migrated: run `outbox migrate` (with the same --dsn and --table) first", a.table), err, store.ErrNotMigrated}
	case errors.Is(err, store.ErrPermission):
		return &problem{fmt.Sprintf("the database user lacks rights on table %s: grant it SELECT, INSERT, UPDATE and DELETE", a.table), err, store.ErrPermission}
	}
	return err
}
