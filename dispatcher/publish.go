package dispatcher

import (
	"errors"

	"github.com/outboxgo/outbox/publisher"
)

// failureOf is the error of message id in a publish call's error.
func failureOf(err error, id string) error {
	var be *publisher.BatchError
	if errors.As(err, &be) {
		return be.Failed[id]
	}
	return err
}
