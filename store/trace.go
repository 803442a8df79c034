package store

import (
	"context"
	"maps"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Trace context headers (W3C Trace Context). Write stores the caller's trace context under
// them, the dispatcher continues it in its publish span and hands the publish span's context
// to the broker under the same names, and the consumer's middleware continues from there.
const (
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
)

var traceContext propagation.TraceContext

// WithTraceContext returns headers with the trace context of ctx added, when ctx carries a
// valid span and headers carry no traceparent yet. headers itself is not changed.
func WithTraceContext(ctx context.Context, headers map[string]string) map[string]string {
	if _, ok := headers[HeaderTraceparent]; ok || !trace.SpanContextFromContext(ctx).IsValid() {
		return headers
	}
	out := make(map[string]string, len(headers)+2)
	maps.Copy(out, headers)
	traceContext.Inject(ctx, propagation.MapCarrier(out))
	return out
}

// TraceContextOf returns ctx with the remote span context stored in headers, if any, as the
// parent of spans started from it.
func TraceContextOf(ctx context.Context, headers map[string]string) context.Context {
	if _, ok := headers[HeaderTraceparent]; !ok {
		return ctx
	}
	return traceContext.Extract(ctx, propagation.MapCarrier(headers))
}
