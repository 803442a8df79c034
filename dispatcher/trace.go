package dispatcher

import (
	"context"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxgo/outbox/internal/tracing"
	"github.com/outboxgo/outbox/store"
)

const tracerName = "github.com/outboxgo/outbox/dispatcher"

// publishSpan starts the span of one message's publish as a child of the trace the message
// was written in (its traceparent header), and returns the context to publish with and the
// function that ends the span with the publish's outcome. A message written outside a trace
// gets no span.
func (d *Dispatcher) publishSpan(ctx context.Context, m store.ClaimedMessage) (context.Context, func(error)) {
	return tracing.Start(ctx, d.tracer, m.Headers, trace.SpanKindProducer, "send", m.Topic, m.ID)
}

// setTraceContext replaces the stored trace context in a message's metadata with that of the
// publish span in ctx, so that the consumer continues from the publish.
func setTraceContext(ctx context.Context, md map[string]string) {
	if trace.SpanContextFromContext(ctx).IsValid() {
		propagation.TraceContext{}.Inject(ctx, propagation.MapCarrier(md))
	}
}
