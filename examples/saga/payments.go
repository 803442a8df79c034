package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/uptrace/bun"

	"github.com/outboxgo/outbox/store"
)

// Payment statuses.
const (
	paymentCompleted = "COMPLETED"
	paymentFailed    = "FAILED"
)

// Payment is a row of the payments service.
type Payment struct {
	bun.BaseModel `bun:"table:payments"`

	ID string `bun:",pk"`
	// OrderID is not unique on purpose: the check at the end counts the payments of each
	// order, so that a charge applied twice shows up instead of failing the handler.
	OrderID   string    `bun:",notnull"`
	Customer  string    `bun:",notnull"`
	Amount    string    `bun:",notnull"` // decimal as text, never float
	Status    string    `bun:",notnull"`
	Reason    string    `bun:",notnull"`
	CreatedAt time.Time `bun:",notnull"`
}

// PaymentOutcome is the payload of PaymentCompleted and PaymentFailed.
type PaymentOutcome struct {
	OrderID   string `json:"orderId"`
	PaymentID string `json:"paymentId"`
	Amount    string `json:"amount"`
	Reason    string `json:"reason,omitempty"`
}

const chargeHandler = "payments.charge"

// The payment rule: orders over the card limit and customers on the blocklist are declined
// (about a quarter of the orders this program creates).
const cardLimitCents = 400_00

var blocklist = map[string]bool{"mallory": true}

// decide applies the payment rule; reason is empty when the payment goes through.
func decide(customer, amount string) (reason string, err error) {
	cents, err := parseCents(amount)
	switch {
	case err != nil:
		return "", err
	case blocklist[customer]:
		return "customer blocked", nil
	case cents > cardLimitCents:
		return "over the card limit of " + formatCents(cardLimitCents), nil
	}
	return "", nil
}

type paymentsService struct{ *service }

func (p *paymentsService) migrate(ctx context.Context) error {
	_, err := p.db.bun.NewCreateTable().Model((*Payment)(nil)).IfNotExists().Exec(ctx)
	return err
}

func (p *paymentsService) start(ctx context.Context) error {
	return p.startRouter(ctx, handlerSpec{name: chargeHandler, topic: ordersTopic, group: "payments", fn: p.charge})
}

// charge attempts the payment of a new order and writes the payment and its outcome event
// in one transaction, the inbox's: charging is not idempotent by itself, and the inbox is
// what keeps a redelivered OrderCreated from charging twice.
func (p *paymentsService) charge(ctx context.Context, tx bun.Tx, msg *message.Message) error {
	if t := msg.Metadata.Get("event_type"); t != eventOrderCreated {
		return nil // not for us
	}
	var ev OrderCreated
	if err := json.Unmarshal(msg.Payload, &ev); err != nil {
		return fmt.Errorf("OrderCreated %s: %w", msg.UUID, err)
	}
	reason, err := decide(ev.Customer, ev.Amount)
	if err != nil {
		return fmt.Errorf("order %s: %w", ev.OrderID, err)
	}
	pay := Payment{ID: store.NewID(), OrderID: ev.OrderID, Customer: ev.Customer, Amount: ev.Amount,
		Status: paymentCompleted, Reason: reason, CreatedAt: time.Now().UTC()}
	event := eventPaymentCompleted
	if reason != "" {
		pay.Status, event = paymentFailed, eventPaymentFailed
	}
	payload, err := json.Marshal(PaymentOutcome{OrderID: ev.OrderID, PaymentID: pay.ID, Amount: pay.Amount, Reason: reason})
	if err != nil {
		return err
	}
	if _, err := tx.NewInsert().Model(&pay).Exec(ctx); err != nil {
		return err
	}
	return p.db.outbox.Write(ctx, tx, store.Message{
		Topic:   paymentsTopic,
		Key:     ev.OrderID,
		Payload: payload,
		Headers: map[string]string{"event_type": event, "content_type": "application/json"},
	})
}

// parseCents reads a non-negative decimal with two decimal places ("12.30") as cents.
func parseCents(s string) (int64, error) {
	units, frac, ok := strings.Cut(s, ".")
	if !ok || len(frac) != 2 || units == "" || strings.ContainsAny(units+frac, "+-") {
		return 0, fmt.Errorf("amount %q is not a decimal with two places", s)
	}
	u, err := strconv.ParseInt(units, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("amount %q: %w", s, err)
	}
	f, err := strconv.ParseInt(frac, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("amount %q: %w", s, err)
	}
	return u*100 + f, nil
}

func formatCents(c int64) string { return fmt.Sprintf("%d.%02d", c/100, c%100) }
