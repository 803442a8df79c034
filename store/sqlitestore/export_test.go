package sqlitestore

import "time"

// Writes is writes, for tests.
var Writes = writes

// SetGateTimeout sets how long a write waits at the gate, until the test ends.
func SetGateTimeout(t interface{ Cleanup(func()) }, d time.Duration) {
	old := gateTimeout
	gateTimeout = d
	t.Cleanup(func() { gateTimeout = old })
}
