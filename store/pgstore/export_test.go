package pgstore

import "time"

// SetStatusEvery sets how often log readers confirm their position when nothing asks them to
// sooner, until the returned function is called. Its callers must not run in parallel, and
// must stop their readers before restoring.
func SetStatusEvery(d time.Duration) (restore func()) {
	old := statusEvery
	statusEvery = d
	return func() { statusEvery = old }
}
