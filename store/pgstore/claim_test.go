package pgstore_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outboxgo/outbox/store"
)

// A claim reads the pending index in write order and stops at its limit, however large the
// backlog and whatever the table's statistics say: here they were never taken, so the
// planner believes the 20,000 pending messages are a handful, and would otherwise read them
// all and sort them, on every claim.
func TestClaimReadsOnlyTheHeadOfABacklog(t *testing.T) {
	st, db := newStore(t)
	ctx := context.Background()
	pad := strings.Repeat("x", 100)
	for start := 0; start < 20000; start += 1000 {
		msgs := make([]store.Message, 1000)
		for i := range msgs {
			msgs[i] = store.Message{Topic: "t", Key: fmt.Sprint("k", (start+i)%500), Payload: []byte(pad)}
		}
		write(t, st, db, msgs...)
	}
	index := st.TableName() + "_pending"
	read := func() int64 {
		var n int64
		require.NoError(t, db.QueryRow("SELECT idx_tup_read FROM pg_stat_user_indexes WHERE schemaname = $1 AND indexrelname = $2",
			st.Schema(), index).Scan(&n))
		return n
	}
	// Statistics reach the view when a backend reports them, within about a second.
	settled := func() int64 {
		for last := int64(-1); ; {
			time.Sleep(1100 * time.Millisecond)
			n := read()
			if n == last {
				return n
			}
			last = n
		}
	}
	before := settled()
	res, err := st.Claim(ctx, &store.ClaimParams{Limit: 10, Lease: time.Minute})
	require.NoError(t, err)
	require.Len(t, res.Messages, 10)
	after := settled()
	require.Positive(t, after-before, "the claim used the pending index")
	require.Less(t, after-before, int64(1000), "index entries the claim read")
}
