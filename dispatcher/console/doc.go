// Package console is an operator console for an outbox in the browser: an [http.Handler]
// that an application mounts under a prefix of its own router, behind its own
// authentication, and that the operator command serves too (outbox serve).
//
//	c, err := console.New(console.Config{Store: outbox, Dispatcher: d})
//	defer c.Close()
//	mux.Handle("/outbox/", http.StripPrefix("/outbox", c))
//
// # Pages
//
// The overview shows the dispatcher's mode, pending and parked counts, the age of the
// oldest pending message, the log lag, and, when a [dispatcher.Dispatcher] is given, what it
// published and failed per minute over the last hour (kept in memory from the moment [New]
// is called). The parked page lists parked messages with their last error and the start of
// their payload, paged and filtered by topic and key. The key page shows a key's pending
// messages in the order they will be published, and what holds them.
//
// # Actions
//
// Requeue one parked message, those of a key or a topic, or all; purge delivered messages
// older than an age. Each is a POST that first shows a confirmation page, then a report of
// what changed. Config.ReadOnly hides them and refuses them with 403.
//
// # Safety
//
//   - No authentication of its own: mount it behind the application's.
//   - Everything it serves is embedded; no script runs on its pages (the Content Security
//     Policy allows none), and payloads, keys and errors are escaped by html/template.
//   - Every action needs a token from a cookie repeated in the form, and browsers' requests
//     from another origin are refused (http.CrossOriginProtection).
//   - The store's errors go to the log, not to the page: a driver's error may name hosts
//     and users. No DSN reaches the console at all.
//   - Every query is bounded: lists read at most Config.MaxListed messages, the overview
//     counts parked messages by topic among the oldest 100 only, and the counts are the
//     store's own [store.Operator.Stats], which the status handler runs too.
package console
