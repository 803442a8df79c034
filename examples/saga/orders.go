package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/uptrace/bun"

	"github.com/outboxgo/outbox/store"
)

// Order statuses: PENDING when created, RESERVED once its stock is held, then PAID, or
// CANCELLED by the compensating transaction when the payment failed.
const (
	statusPending   = "PENDING"
	statusReserved  = "RESERVED"
	statusPaid      = "PAID"
	statusCancelled = "CANCELLED"
)

// Order is a row of the orders service.
type Order struct {
	bun.BaseModel `bun:"table:orders"`

	ID        string    `bun:",pk"`
	Customer  string    `bun:",notnull"`
	SKU       string    `bun:"sku,notnull"`
	Qty       int64     `bun:",notnull"`
	Amount    string    `bun:",notnull"` // decimal as text, never float
	Status    string    `bun:",notnull"`
	CreatedAt time.Time `bun:",notnull"`
	UpdatedAt time.Time `bun:",notnull"`
}

// Stock is what the orders service can sell of one item. Reserving moves units from
// available to reserved; a paid order moves them to sold, a cancelled one back to available.
type Stock struct {
	bun.BaseModel `bun:"table:stock"`

	SKU       string `bun:"sku,pk"`
	Available int64  `bun:",notnull"`
	Reserved  int64  `bun:",notnull"`
	Sold      int64  `bun:",notnull"`
}

// AppliedPayment records each payment outcome the orders service applied: one per order
// when every message is handled once.
type AppliedPayment struct {
	bun.BaseModel `bun:"table:applied_payments"`

	ID        int64     `bun:",pk,autoincrement"`
	OrderID   string    `bun:",notnull"`
	PaymentID string    `bun:",notnull"`
	Outcome   string    `bun:",notnull"` // the event type
	AppliedAt time.Time `bun:",notnull"`
}

// OrderCreated is the event the orders service publishes for each new order.
type OrderCreated struct {
	OrderID  string `json:"orderId"`
	Customer string `json:"customer"`
	SKU      string `json:"sku"`
	Qty      int64  `json:"qty"`
	Amount   string `json:"amount"`
}

// Event types, in the event_type header.
const (
	eventOrderCreated     = "OrderCreated"
	eventPaymentCompleted = "PaymentCompleted"
	eventPaymentFailed    = "PaymentFailed"
)

// Handler names, as the router knows them.
const (
	reserveHandler      = "orders.reserve-stock"
	applyPaymentHandler = "orders.apply-payment"
)

var (
	customers = []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "mallory"}
	skus      = []string{"sku-kettle", "sku-teapot", "sku-mug", "sku-tray"}
)

const maxQty = 3

// initialStock is each item's stock: enough for every order, so that reservations succeed.
func initialStock(orders int) int64 { return int64(orders) * maxQty }

type ordersService struct {
	*service
	n       int
	created atomic.Int64
}

func (o *ordersService) migrate(ctx context.Context) error {
	for _, model := range []any{(*Order)(nil), (*Stock)(nil), (*AppliedPayment)(nil)} {
		if _, err := o.db.bun.NewCreateTable().Model(model).IfNotExists().Exec(ctx); err != nil {
			return err
		}
	}
	stock := make([]Stock, len(skus))
	for i, sku := range skus {
		stock[i] = Stock{SKU: sku, Available: initialStock(o.n)}
	}
	_, err := o.db.bun.NewInsert().Model(&stock).On("CONFLICT DO NOTHING").Exec(ctx)
	return err
}

// start consumes the service's own OrderCreated events (to reserve stock) and the payment
// outcomes, each in a consumer group of its own.
func (o *ordersService) start(ctx context.Context) error {
	return o.startRouter(ctx,
		handlerSpec{name: reserveHandler, topic: ordersTopic, group: "orders-stock", fn: o.reserveStock},
		handlerSpec{name: applyPaymentHandler, topic: paymentsTopic, group: "orders", fn: o.applyPayment},
	)
}

// create places the orders, rate per second (0: as fast as it can). Each order and its
// OrderCreated event commit together or not at all.
func (o *ordersService) create(ctx context.Context, rate int) error {
	var pace <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Second / time.Duration(rate))
		defer t.Stop()
		pace = t.C
	}
	for i := range o.n {
		if pace != nil {
			select {
			case <-pace:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		now := time.Now().UTC()
		order := Order{
			ID:        fmt.Sprintf("ord-%06d", i+1),
			Customer:  customers[i%len(customers)],
			SKU:       skus[i%len(skus)],
			Qty:       int64(1 + i%maxQty),
			Amount:    formatCents(1000 + int64(i*7919%49000)), // 10.00 to 499.99, spread out
			Status:    statusPending,
			CreatedAt: now,
			UpdatedAt: now,
		}
		payload, err := json.Marshal(OrderCreated{OrderID: order.ID, Customer: order.Customer, SKU: order.SKU, Qty: order.Qty, Amount: order.Amount})
		if err != nil {
			return err
		}
		err = o.db.bun.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			if _, err := tx.NewInsert().Model(&order).Exec(ctx); err != nil {
				return err
			}
			return o.db.outbox.Write(ctx, tx, store.Message{
				Topic:   ordersTopic,
				Key:     order.ID, // one partition per order: its events stay in order
				Payload: payload,
				Headers: map[string]string{"event_type": eventOrderCreated, "content_type": "application/json"},
			})
		})
		if err != nil {
			return fmt.Errorf("order %s: %w", order.ID, err)
		}
		o.created.Add(1)
	}
	return nil
}

// reserveStock holds the order's items: the order becomes RESERVED.
func (o *ordersService) reserveStock(ctx context.Context, tx bun.Tx, msg *message.Message) error {
	var ev OrderCreated
	if err := json.Unmarshal(msg.Payload, &ev); err != nil {
		return fmt.Errorf("OrderCreated %s: %w", msg.UUID, err)
	}
	res, err := tx.NewUpdate().Model((*Order)(nil)).
		Set("status = ?", statusReserved).Set("updated_at = ?", time.Now().UTC()).
		Where("id = ?", ev.OrderID).Where("status = ?", statusPending).
		Exec(ctx)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return err // not PENDING: reserved before
	}
	_, err = tx.NewUpdate().Model((*Stock)(nil)).
		Set("available = available - ?", ev.Qty).Set("reserved = reserved + ?", ev.Qty).
		Where("sku = ?", ev.SKU).
		Exec(ctx)
	return err
}

// errNotReserved makes the router hand the payment outcome back; Kafka redelivers it.
var errNotReserved = errors.New("order not reserved yet")

// applyPayment ends the saga for one order: PaymentCompleted sells its reserved items and
// marks it PAID; PaymentFailed is the compensating transaction: the order is CANCELLED and its
// items go back on sale. Either way in one transaction with the message id.
func (o *ordersService) applyPayment(ctx context.Context, tx bun.Tx, msg *message.Message) error {
	var ev PaymentOutcome
	if err := json.Unmarshal(msg.Payload, &ev); err != nil {
		return fmt.Errorf("payment outcome %s: %w", msg.UUID, err)
	}
	outcome := msg.Metadata.Get("event_type")
	if outcome != eventPaymentCompleted && outcome != eventPaymentFailed {
		return fmt.Errorf("payment outcome %s: unknown event_type %q", msg.UUID, outcome)
	}
	status := statusPaid
	if outcome == eventPaymentFailed {
		status = statusCancelled
	}
	// Only a RESERVED order settles; the row lock makes concurrent outcomes take turns.
	res, err := tx.NewUpdate().Model((*Order)(nil)).
		Set("status = ?", status).Set("updated_at = ?", time.Now().UTC()).
		Where("id = ?", ev.OrderID).Where("status = ?", statusReserved).
		Exec(ctx)
	if err != nil {
		return err
	}
	settled, err := res.RowsAffected()
	if err != nil {
		return err
	}
	var order Order
	if err := tx.NewSelect().Model(&order).Where("id = ?", ev.OrderID).Scan(ctx); err != nil {
		return fmt.Errorf("order %s: %w", ev.OrderID, err)
	}
	if settled == 0 && order.Status != statusPaid && order.Status != statusCancelled {
		// The payment and the reservation both follow OrderCreated: the payment can come
		// first, or the reservation can commit between the update and the select.
		return fmt.Errorf("%w: %s is %s", errNotReserved, order.ID, order.Status)
	}
	applied := AppliedPayment{OrderID: order.ID, PaymentID: ev.PaymentID, Outcome: outcome, AppliedAt: time.Now().UTC()}
	if _, err := tx.NewInsert().Model(&applied).Exec(ctx); err != nil {
		return err
	}
	if settled == 0 {
		return nil // settled before; the record above lets the check see it
	}
	stock := tx.NewUpdate().Model((*Stock)(nil)).Set("reserved = reserved - ?", order.Qty)
	if status == statusPaid {
		stock = stock.Set("sold = sold + ?", order.Qty)
	} else {
		stock = stock.Set("available = available + ?", order.Qty) // back on sale
	}
	_, err = stock.Where("sku = ?", order.SKU).Exec(ctx)
	return err
}

// statusCounts counts the orders by status.
func statusCounts(ctx context.Context, d *database) (map[string]int, error) {
	var rows []struct {
		Status string
		N      int
	}
	err := d.bun.NewSelect().Model((*Order)(nil)).Column("status").ColumnExpr("count(*) AS n").Group("status").Scan(ctx, &rows)
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	for _, r := range rows {
		counts[r.Status] = r.N
	}
	return counts, nil
}
