package dispatcher_test

import (
	"context"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/dispatcher/outboxtest"
	"github.com/outboxgo/outbox/internal/dbtest"
	"github.com/outboxgo/outbox/middleware/idempotency"
	"github.com/outboxgo/outbox/publisher"
	"github.com/outboxgo/outbox/store"
)

// A message written inside a trace is followed to the consumer: Write stores the writer's
// trace context, the dispatcher publishes in a child span and hands that span's context to
// the broker, and the idempotency middleware continues it in the handler's context.
func TestTraceFollowsAMessageFromWriteToConsumer(t *testing.T) {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	_, db, st := sharedSQLite(t).prepare(t)

	ctx, placeOrder := tp.Tracer("app").Start(context.Background(), "place order")
	tx, err := db.Begin()
	require.NoError(t, err)
	require.NoError(t, st.Write(ctx, tx, store.Message{Topic: "orders", Key: "o-1", Payload: []byte("{}")}))
	require.NoError(t, st.Write(context.Background(), tx, store.Message{Topic: "orders", Key: "o-2", Payload: []byte("{}")}))
	require.NoError(t, tx.Commit())
	placeOrder.End()
	writer := placeOrder.SpanContext()
	stored := outboxtest.RequireWritten(t, st, nil, outboxtest.Want{Key: "o-1"})
	require.Equal(t, "00-"+writer.TraceID().String()+"-"+writer.SpanID().String()+"-01", stored.Headers[store.HeaderTraceparent])
	untraced := outboxtest.RequireWritten(t, st, nil, outboxtest.Want{Key: "o-2"})
	require.NotContains(t, untraced.Headers, store.HeaderTraceparent, "written outside a trace")

	pub := outboxtest.NewPublisher()
	d, err := dispatcher.New(st, pub, dispatcher.Config{TracerProvider: tp, Logger: quiet()})
	require.NoError(t, err)
	n, err := d.Drain(context.Background())
	require.NoError(t, err)
	require.Equal(t, 2, n)

	publish := spanNamed(t, spans, "publish orders")
	require.Len(t, spansNamed(spans, "publish orders"), 1, "a message written outside a trace gets no span")
	require.Equal(t, writer.TraceID(), publish.SpanContext().TraceID())
	require.Equal(t, writer.SpanID(), publish.Parent().SpanID(), "the publish span is a child of the writer's span")
	require.Equal(t, trace.SpanKindProducer, publish.SpanKind())
	var published *message.Message
	for _, m := range pub.Messages("orders") {
		if m.Metadata.Get(publisher.MetadataKey) == "o-1" {
			published = m
		} else {
			require.Empty(t, m.Metadata.Get(store.HeaderTraceparent))
		}
	}
	require.Contains(t, published.Metadata.Get(store.HeaderTraceparent), publish.SpanContext().SpanID().String(),
		"the broker gets the publish span's context")

	sqldb := dbtest.SQLite(t)
	inbox, err := idempotency.New(bun.NewDB(sqldb, sqlitedialect.New()), idempotency.Config{TracerProvider: tp, Logger: quiet()})
	require.NoError(t, err)
	require.NoError(t, inbox.Migrate(context.Background()))
	var handled trace.SpanContext
	handler := inbox.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		handled = trace.SpanContextFromContext(msg.Context())
		return nil, nil
	})
	_, err = handler(published)
	require.NoError(t, err)
	process := spanNamed(t, spans, "process")
	require.Equal(t, publish.SpanContext().SpanID(), process.Parent().SpanID(), "the consumer continues from the publish")
	require.Equal(t, trace.SpanKindConsumer, process.SpanKind())
	require.Equal(t, process.SpanContext().SpanID(), handled.SpanID(), "the handler runs in the consumer span")
}

func spansNamed(rec *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == name || strings.HasPrefix(s.Name(), name+" ") {
			out = append(out, s)
		}
	}
	return out
}

func spanNamed(t *testing.T, rec *tracetest.SpanRecorder, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	found := spansNamed(rec, name)
	require.NotEmpty(t, found, "no span named %q", name)
	return found[0]
}
