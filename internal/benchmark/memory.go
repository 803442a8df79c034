package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/publisher/kafkapub"
	"github.com/outboxgo/outbox/store/pgstore"
)

// memoryCase fills a Postgres outbox with n messages, then has a child process (this program
// with -child-drain) drain it with the default settings, and prints the child's peak RSS.
// The broker and the consumer stay in this process, so the child holds only the dispatcher.
func memoryCase(n int) error {
	pg, err := newPostgres()
	if err != nil {
		return err
	}
	defer pg.drop()
	db, err := pgstore.Open(pg.dsn)
	if err != nil {
		return err
	}
	st, err := dbtest.EngineOf(pgstore.New(db, pgstore.Config{}))
	if err == nil {
		err = st.Migrate(context.Background())
	}
	if err == nil {
		err = fill(st, n)
	}
	db.Close()
	if err != nil {
		return fmt.Errorf("fill: %w", err)
	}

	kb, err := startKafka()
	if err != nil {
		return err
	}
	defer kb.Close()
	brokers, consumer := kb.addrs, kb.consumer

	child, err := startChild(pg.dsn, brokers)
	if err != nil {
		return err
	}
	defer child.kill()
	cmd, stdin := child.cmd, child.stdin
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	if _, err := readAll(ctx, consumer, n, publisher.MetadataID); err != nil {
		return err
	}
	elapsed := time.Since(start)
	// VmHWM, read while the child lives, is the peak of its own address space. Rusage's
	// Maxrss would not do: Go starts children with vfork, so it counts this process's memory.
	hwm, err := vmHWM(cmd.Process.Pid)
	if err != nil {
		return err
	}
	stdin.Close() // asks the child to stop
	err = cmd.Wait()
	child.exited = true
	if err != nil {
		return fmt.Errorf("child: %w", err)
	}
	fmt.Printf("case=pg-memory n=%d peak_rss=%.0fMiB rate=%.0f elapsed=%v\n", n, float64(hwm)/1024, float64(n)/elapsed.Seconds(), elapsed.Round(time.Millisecond))
	return nil
}

// child is a dispatcher process started by startChild.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser // closing it asks the child to stop
	exited bool
}

// startChild starts this program as a dispatcher draining the Postgres outbox at dsn
// (-child-drain), with extra flags, and waits until it says it is ready.
func startChild(dsn string, brokers []string, flags ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, append([]string{"-child-drain", dsn, "-child-brokers", strings.Join(brokers, ",")}, flags...)...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		c.kill()
		return nil, fmt.Errorf("child did not start: %q %v", line, err)
	}
	return c, nil
}

// kill ends the child at once (SIGKILL) unless it has exited.
func (c *child) kill() {
	if !c.exited {
		c.cmd.Process.Kill()
		c.cmd.Wait()
		c.exited = true
	}
}

// vmHWM returns the peak resident set size of process pid, in KiB.
func vmHWM(pid int) (int64, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range bytes.Lines(status) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmHWM:")); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(string(rest)), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

// childDrain is the memory case's child: a dispatcher with the default settings on the
// outbox at dsn, from "ready" on its standard output until its standard input closes.
func childDrain(dsn string, brokers []string, pollOnly bool) error {
	db, err := pgstore.Open(dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	st, err := dbtest.EngineOf(pgstore.New(db, pgstore.Config{}))
	if err != nil {
		return err
	}
	pub, err := kafkapub.New(kafkapub.Config{Brokers: brokers})
	if err != nil {
		return err
	}
	defer pub.Close()
	d, err := dispatcher.New(st, pub, dispatcher.Config{Logger: warnLogger(), PollOnly: pollOnly})
	if err != nil {
		return err
	}
	ctx := context.Background()
	fmt.Println("ready")
	if err := d.Start(ctx); err != nil {
		return err
	}
	io.Copy(io.Discard, os.Stdin)
	return d.Stop(ctx)
}
