package main

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/outboxgo/outbox/store"
)

// checkResult is what the two databases say at the end, and what is wrong with it.
type checkResult struct {
	orders, paid, cancelled      int
	payments, completed, failed  int
	chargedCents                 int64
	ordersOutbox, paymentsOutbox int
	problems                     []string
}

// check reads both services' databases and lists every way they disagree with the saga: each
// of the n orders PAID with exactly one completed payment or CANCELLED with exactly one
// failed payment, as the payment rule says; each outcome applied once; the stock of cancelled
// orders back on sale and that of paid ones sold; every event delivered.
func check(ctx context.Context, n int, ordersDB, paymentsDB *database) (*checkResult, error) {
	var (
		orders  []Order
		applied []AppliedPayment
		stock   []Stock
		pays    []Payment
	)
	if err := ordersDB.bun.NewSelect().Model(&orders).Order("id").Scan(ctx); err != nil {
		return nil, fmt.Errorf("orders: %w", err)
	}
	if err := ordersDB.bun.NewSelect().Model(&applied).Order("id").Scan(ctx); err != nil {
		return nil, fmt.Errorf("applied payments: %w", err)
	}
	if err := ordersDB.bun.NewSelect().Model(&stock).Order("sku").Scan(ctx); err != nil {
		return nil, fmt.Errorf("stock: %w", err)
	}
	if err := paymentsDB.bun.NewSelect().Model(&pays).Order("order_id", "id").Scan(ctx); err != nil {
		return nil, fmt.Errorf("payments: %w", err)
	}
	r := &checkResult{orders: len(orders), payments: len(pays)}
	problem := func(format string, args ...any) { r.problems = append(r.problems, fmt.Sprintf(format, args...)) }

	if len(orders) != n {
		problem("%d orders in the orders database, want %d", len(orders), n)
	}
	paysByOrder := map[string][]Payment{}
	for _, p := range pays {
		paysByOrder[p.OrderID] = append(paysByOrder[p.OrderID], p)
		switch p.Status {
		case paymentCompleted:
			r.completed++
			cents, err := parseCents(p.Amount)
			if err != nil {
				problem("payment %s: %v", p.ID, err)
			}
			r.chargedCents += cents
		case paymentFailed:
			r.failed++
		default:
			problem("payment %s has status %q", p.ID, p.Status)
		}
	}
	appliedByOrder := map[string][]AppliedPayment{}
	for _, a := range applied {
		appliedByOrder[a.OrderID] = append(appliedByOrder[a.OrderID], a)
	}
	soldBySKU := map[string]int64{}
	var paidCents int64
	known := map[string]bool{}
	for _, o := range orders {
		known[o.ID] = true
		var wantPayment, wantEvent string
		switch o.Status {
		case statusPaid:
			r.paid++
			soldBySKU[o.SKU] += o.Qty
			cents, _ := parseCents(o.Amount)
			paidCents += cents
			wantPayment, wantEvent = paymentCompleted, eventPaymentCompleted
		case statusCancelled:
			r.cancelled++
			wantPayment, wantEvent = paymentFailed, eventPaymentFailed
		default:
			problem("order %s is stuck in %s", o.ID, o.Status)
			continue
		}
		ps := paysByOrder[o.ID]
		if len(ps) != 1 || ps[0].Status != wantPayment {
			problem("order %s is %s with %d payments %v, want exactly one %s", o.ID, o.Status, len(ps), paymentStatuses(ps), wantPayment)
		} else {
			p := ps[0]
			if p.Amount != o.Amount {
				problem("order %s of %s was charged %s", o.ID, o.Amount, p.Amount)
			}
			reason, err := decide(o.Customer, o.Amount)
			if err != nil {
				problem("order %s: %v", o.ID, err)
			} else if (reason == "") != (p.Status == paymentCompleted) {
				problem("order %s (%s, %s): payment %s against the rule", o.ID, o.Customer, o.Amount, p.Status)
			}
		}
		as := appliedByOrder[o.ID]
		if len(as) != 1 || as[0].Outcome != wantEvent {
			outcomes := make([]string, len(as))
			for i, a := range as {
				outcomes[i] = a.Outcome
			}
			problem("order %s is %s, and its payment outcome was applied %d times %v, want once %s", o.ID, o.Status, len(as), outcomes, wantEvent)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(paysByOrder)) {
		if !known[id] {
			problem("%d payments for order %s, which the orders service does not know", len(paysByOrder[id]), id)
		}
	}
	if r.completed != r.paid || r.failed != r.cancelled {
		problem("%d completed and %d failed payments for %d PAID and %d CANCELLED orders", r.completed, r.failed, r.paid, r.cancelled)
	}
	if r.chargedCents != paidCents {
		problem("charged %s for PAID orders worth %s", formatCents(r.chargedCents), formatCents(paidCents))
	}

	// Stock: nothing still reserved, and every unit either sold (to a PAID order) or available.
	if len(stock) != len(skus) {
		problem("%d stock rows, want %d", len(stock), len(skus))
	}
	for _, s := range stock {
		if s.Reserved != 0 || s.Sold != soldBySKU[s.SKU] || s.Available+s.Sold != initialStock(n) {
			problem("stock of %s: %d available, %d reserved, %d sold; want %d, 0, %d", s.SKU,
				s.Available, s.Reserved, s.Sold, initialStock(n)-soldBySKU[s.SKU], soldBySKU[s.SKU])
		}
	}

	// Events: one per order and one per payment, all delivered.
	for _, ob := range []struct {
		name  string
		db    *database
		count *int
		want  int
	}{{"orders", ordersDB, &r.ordersOutbox, len(orders)}, {"payments", paymentsDB, &r.paymentsOutbox, len(pays)}} {
		rows, err := outboxRows(ctx, ob.db.outbox)
		if err != nil {
			return nil, fmt.Errorf("%s outbox: %w", ob.name, err)
		}
		*ob.count = len(rows)
		if len(rows) != ob.want {
			problem("%d events in the %s outbox, want %d", len(rows), ob.name, ob.want)
		}
		undelivered := map[store.State]int{}
		for _, row := range rows {
			if row.state != store.Delivered {
				undelivered[row.state]++
			}
		}
		for _, state := range slices.Sorted(maps.Keys(undelivered)) {
			problem("%d events in the %s outbox are %s, not delivered", undelivered[state], ob.name, state)
		}
	}
	return r, nil
}

func paymentStatuses(ps []Payment) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Status
	}
	return out
}
