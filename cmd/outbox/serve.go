package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/outboxgo/outbox/dispatcher/console"
)

func setupServe(fs *flag.FlagSet) func(context.Context, *app) error {
	addr := fs.String("addr", "127.0.0.1:8080", "listen on `host:port`; a loopback address unless --allow-remote")
	readOnly := fs.Bool("read-only", false, "show the outbox, but hide and refuse requeue and purge")
	allowRemote := fs.Bool("allow-remote", false, "allow an address other than loopback: the console has no authentication of its own, so put it behind a proxy that has")
	return func(ctx context.Context, a *app) error {
		host, _, err := net.SplitHostPort(*addr)
		if err != nil {
			return usagef("serve: --addr %q is not host:port (e.g. 127.0.0.1:8080)", *addr)
		}
		if !*allowRemote && !loopback(host) {
			return usagef("serve: --addr %s is not a loopback address, and the console has no authentication of its own: "+
				"serve it on 127.0.0.1 and reach it through an SSH tunnel, or put it behind an authenticating proxy and add --allow-remote", *addr)
		}
		if err := a.open(ctx, true, true); err != nil {
			return err
		}
		// The console has no dispatcher here: the dispatchers run in the application, so it
		// shows what the store knows.
		c, err := console.New(console.Config{Store: a.st, ReadOnly: *readOnly, Logger: slog.New(slog.NewTextHandler(a.stderr, nil))})
		if err != nil {
			return err
		}
		defer c.Close()
		ln, err := net.Listen("tcp", *addr)
		if err != nil {
			return fmt.Errorf("serve: listen on %s: %w", *addr, err)
		}
		srv := &http.Server{Handler: c, ReadHeaderTimeout: 10 * time.Second}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		mode := ""
		if *readOnly {
			mode = " (read-only)"
		}
		fmt.Fprintf(a.stdout, "outbox console of table %s: http://%s/%s; interrupt to stop\n", a.table, ln.Addr(), mode)
		select {
		case err := <-served:
			return fmt.Errorf("serve: %w", err)
		case <-ctx.Done():
		}
		shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("serve: stop: %w", err)
		}
		return nil
	}
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
