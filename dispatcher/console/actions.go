package console

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/outboxgo/outbox/store"
)

// confirmData is the page that asks before an action changes anything. Fields are the
// form's hidden fields, sent again with the confirmation.
type confirmData struct {
	Action   string // the path to POST to
	Question string
	Button   string
	Fields   []field
	Back     string
}

type field struct{ Name, Value string }

type doneData struct {
	Report string
	Back   string
}

// confirmed reports whether the form is the confirmation; otherwise it has shown the
// question.
func (c *Console) confirmed(w http.ResponseWriter, r *http.Request, q confirmData, fields ...field) bool {
	if r.PostFormValue("confirmed") == "yes" {
		return true
	}
	q.Fields = fields
	c.render(w, r, http.StatusOK, "confirm", "Confirm", q)
	return false
}

func (c *Console) requeue(w http.ResponseWriter, r *http.Request) {
	scope := r.PostFormValue("scope")
	id, topic, key := r.PostFormValue("id"), r.PostFormValue("topic"), r.PostFormValue("key")
	var (
		params    store.RequeueParams
		what      string // for the question
		selection string // for the report
		back      = "parked"
	)
	switch {
	case scope == "id" && id != "":
		params.IDs = []string{id}
		what, selection = "the parked message "+strconv.Quote(id), "id "+strconv.Quote(id)
	case scope == "key" && key != "":
		params.Topic, params.Key = topic, key
		selection = "key " + strconv.Quote(key)
		if topic != "" {
			selection += " in topic " + strconv.Quote(topic)
		}
		what = "the parked messages of " + selection
	case scope == "topic" && topic != "":
		params.Topic = topic
		selection = "topic " + strconv.Quote(topic)
		what = "the parked messages of " + selection
	case scope == "all":
		params.All, what, selection, back = true, "every parked message", "all parked", "./"
	default:
		c.fail(w, r, http.StatusBadRequest, "Say which parked messages to requeue: one id, a key, a topic, or all.")
		return
	}
	q := confirmData{Action: "requeue", Back: back, Button: "Requeue",
		Question: "Requeue " + what + "? They become pending, due now, with their attempts reset."}
	if !c.confirmed(w, r, q, field{"scope", scope}, field{"id", id}, field{"topic", topic}, field{"key", key}) {
		return
	}
	n, err := c.op.Requeue(r.Context(), &params)
	if err != nil {
		c.storeFailed(w, r, "requeue", err)
		return
	}
	c.cfg.Logger.Info("outbox console: requeued parked messages", "selection", selection, "requeued", n)
	report := fmt.Sprintf("Requeued %d %s (%s): pending again, due now.", n, plural(n, "message", "messages"), selection)
	if n == 0 {
		report = "Requeued 0 messages: none parked matched (" + selection + "); they may have been requeued or deleted meanwhile."
	}
	c.render(w, r, http.StatusOK, "done", "Done", doneData{Report: report, Back: back})
}

func (c *Console) purge(w http.ResponseWriter, r *http.Request) {
	raw := strings.TrimSpace(r.PostFormValue("older_than"))
	olderThan, err := parseAge(raw)
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, "Purge: "+err.Error())
		return
	}
	q := confirmData{Action: "purge", Back: "./", Button: "Purge",
		Question: "Delete the messages delivered more than " + raw + " ago? Pending and parked messages are kept."}
	if !c.confirmed(w, r, q, field{"older_than", raw}) {
		return
	}
	n, err := c.op.Purge(r.Context(), &store.PurgeParams{OlderThan: olderThan})
	if err != nil {
		c.storeFailed(w, r, "purge", err)
		return
	}
	c.cfg.Logger.Info("outbox console: purged delivered messages", "older_than", olderThan, "deleted", n)
	report := fmt.Sprintf("Deleted %d delivered %s older than %s.", n, plural(n, "message", "messages"), raw)
	if n == 0 {
		report += " (A purge already running on the database also makes this 0.)"
	}
	c.render(w, r, http.StatusOK, "done", "Done", doneData{Report: report, Back: "./"})
}

func plural(n int64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// parseAge reads a Go duration, or days with an optional rest: 7d, 1d12h.
func parseAge(s string) (time.Duration, error) {
	if s == "" {
		return 0, fmt.Errorf("give an age such as 7d or 36h")
	}
	var days int
	rest := s
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil {
			return 0, fmt.Errorf("%q is not an age such as 7d, 1d12h or 36h", s)
		}
		days, rest = n, s[i+1:]
	}
	var d time.Duration
	if rest != "" {
		var err error
		if d, err = time.ParseDuration(rest); err != nil {
			return 0, fmt.Errorf("%q is not an age such as 7d, 1d12h or 36h", s)
		}
	}
	d += time.Duration(days) * 24 * time.Hour
	if d <= 0 {
		return 0, fmt.Errorf("the age must be positive, got %q", s)
	}
	return d, nil
}
