package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

// The built program, run as operators run it: the DSN from OUTBOX_DSN, JSON on stdout, the
// exit code from the process.
func TestBuiltBinary(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "outbox")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))

	f := sqliteFixture(t)
	f.ok(t, "migrate")
	ids := f.write(t, store.Message{Topic: "orders", Key: "a"}, store.Message{Topic: "orders", Key: "b"})
	f.settle(t, ids[:1], nil, "refused")

	cmd := exec.Command(bin, "status", "--json")
	cmd.Env = append(os.Environ(), "OUTBOX_DSN="+f.flags[1])
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), stderr.String())
	var st statusReport
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &st), stdout.String())
	require.Equal(t, "sqlite", st.Database)
	require.EqualValues(t, 1, st.Pending)
	require.EqualValues(t, 1, st.Parked)
	require.Equal(t, modeNone, st.Log.Mode)
	require.Empty(t, stderr.String())

	cmd = exec.Command(bin, "--dsn", "redis://localhost", "status")
	out, err = cmd.CombinedOutput()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "%v: %s", err, out)
	require.Equal(t, exitUsage, exit.ExitCode())
	require.Contains(t, string(out), "not supported")
}
