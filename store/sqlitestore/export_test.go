package sqlitestore

import "time"

// KindOf names what a statement does to the write gate, for tests.
func KindOf(query string) string {
	return [...]string{reads: "reads", writes: "writes", begins: "begins", ends: "ends"}[kindOf(query)]
}

// SetGateTimeout sets how long a write waits at the gate, until the test ends.
func SetGateTimeout(t interface{ Cleanup(func()) }, d time.Duration) {
	old := gateTimeout
	gateTimeout = d
	t.Cleanup(func() { gateTimeout = old })
}
