// Package tracing starts the spans that carry a message's trace from the writer's
// transaction through the dispatcher's publish to the consumer.
package tracing

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxgo/outbox/store"
)

// Start starts a messaging span for one message ("send" by a producer, "process" by a
// consumer) as a child of the trace context in its headers, and returns the context that
// carries the span and the function that ends it with the operation's error. A message
// without a trace context gets no span: Start returns ctx and a no-op.
func Start(ctx context.Context, tracer trace.Tracer, headers map[string]string, kind trace.SpanKind, operation, topic, id string) (context.Context, func(error)) {
	parent := store.TraceContextOf(ctx, headers)
	if !trace.SpanContextFromContext(parent).IsValid() {
		return ctx, func(error) {}
	}
	name := operation // "send": the span is named "publish <topic>", as messaging conventions do
	if operation == "send" {
		name = "publish"
	}
	if topic != "" {
		name += " " + topic
	}
	ctx, span := tracer.Start(parent, name, trace.WithSpanKind(kind),
		trace.WithAttributes(
			attribute.String("messaging.operation.type", operation),
			attribute.String("messaging.destination.name", topic),
			attribute.String("messaging.message.id", id),
		))
	return ctx, func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}
