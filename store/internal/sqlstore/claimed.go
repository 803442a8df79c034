package sqlstore

import "sync"

// claimedSeqs remembers the seq of each message a claim of this store returned, until its
// outcome is recorded, so that MarkDelivered finds the rows by primary key: on Postgres half
// the time of finding them by id, the longer text key. A message whose seq is not known (its
// outcome recorded by another Store value, or forgotten) is found by id. A seq taken from here
// is always that of the row the claim returned: a row keeps its seq, and a row written later
// with the same id gets a seq of its own, which only its own claim records.
type claimedSeqs struct {
	mu sync.Mutex
	m  map[string]int64
}

// maxClaimedSeqs bounds what a store remembers: far more than the batches in flight, and what
// claims released without an outcome (a dispatcher stopping) leave behind is dropped with the
// rest when it is reached.
const maxClaimedSeqs = 1 << 17

func (c *claimedSeqs) add(rows []claimedRow) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m)+len(rows) > maxClaimedSeqs {
		c.m = make(map[string]int64, len(rows))
	}
	for _, r := range rows {
		c.m[r.m.ID] = r.seq
	}
}

// take forgets ids and returns the seqs of those it knew, and the ids it did not.
func (c *claimedSeqs) take(ids []string) (seqs []int64, unknown []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		if seq, ok := c.m[id]; ok {
			seqs = append(seqs, seq)
			delete(c.m, id)
		} else {
			unknown = append(unknown, id)
		}
	}
	return seqs, unknown
}

// forget forgets ids.
func (c *claimedSeqs) forget(ids ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		delete(c.m, id)
	}
}
