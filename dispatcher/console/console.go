package console

import (
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/outboxgo/outbox/dispatcher"
	"github.com/outboxgo/outbox/store"
)

// Defaults of [Config].
const (
	// PageSizeDefault is how many parked messages a page shows.
	PageSizeDefault = 25
	// MaxListedDefault bounds how many messages one page reads from the store.
	MaxListedDefault = 500
	// QueryTimeoutDefault bounds each page's and each action's calls to the store.
	QueryTimeoutDefault = 10 * time.Second
)

// maxFormBytes bounds an action's form, which holds a few short fields.
const maxFormBytes = 64 << 10

// sampleInterval is how often the publish history reads the dispatcher's counters.
const sampleInterval = time.Minute

// Config configures [New].
type Config struct {
	// Store is the outbox. It must implement [store.Operator], as the stores of this module
	// do. Required.
	Store store.Outbox
	// Dispatcher, when set, adds its mode, its log lag and a chart of what it published and
	// failed per minute over the last hour, kept in memory from the moment New is called.
	// Without it the console shows what the store knows.
	Dispatcher *dispatcher.Dispatcher
	// ReadOnly hides the actions (requeue, purge) and refuses them with 403.
	ReadOnly bool
	// PageSize is how many parked messages a page shows. Defaults to PageSizeDefault.
	PageSize int
	// MaxListed bounds the messages read from the store for one page, and so how far the
	// parked list can be paged; filter by topic or key to reach the rest. Payloads come with
	// each message, so this bounds the page's memory too. Defaults to MaxListedDefault.
	MaxListed int
	// QueryTimeout bounds each call to the store. Defaults to QueryTimeoutDefault.
	QueryTimeout time.Duration
	// Logger receives the errors of the store, which the pages do not show: they may name
	// hosts and users. Nil means slog.Default().
	Logger *slog.Logger
}

//go:embed templates/*.html static/*
var assets embed.FS

// Console is the operator console, an http.Handler. Mount it under a prefix of your router,
// behind your own authentication:
//
//	mux.Handle("/outbox/", http.StripPrefix("/outbox", c))
//
// Its links are relative, so it works under any prefix.
type Console struct {
	cfg     Config
	st      store.Engine
	op      store.Operator
	pages   map[string]*template.Template
	static  http.Handler
	origins *http.CrossOriginProtection
	hist    *history // nil without a dispatcher

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// New returns the console for cfg.Store. Close it when done: with a dispatcher it samples
// the dispatcher's counters once a minute.
func New(cfg Config) (*Console, error) {
	if cfg.Store == nil {
		return nil, errors.New("outbox console: Config.Store is nil; give it the outbox store")
	}
	st := store.EngineOf(cfg.Store)
	op, ok := st.(store.Operator)
	if !ok {
		return nil, errors.New("outbox console: Config.Store does not implement store.Operator; use a store of this module")
	}
	switch {
	case cfg.PageSize < 0:
		return nil, errors.New("outbox console: Config.PageSize must not be negative")
	case cfg.MaxListed < 0:
		return nil, errors.New("outbox console: Config.MaxListed must not be negative")
	case cfg.QueryTimeout < 0:
		return nil, errors.New("outbox console: Config.QueryTimeout must not be negative")
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = PageSizeDefault
	}
	if cfg.MaxListed == 0 {
		cfg.MaxListed = MaxListedDefault
	}
	if cfg.MaxListed < cfg.PageSize {
		return nil, errors.New("outbox console: Config.MaxListed must be at least Config.PageSize")
	}
	if cfg.QueryTimeout == 0 {
		cfg.QueryTimeout = QueryTimeoutDefault
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	static, err := fs.Sub(assets, "static")
	if err != nil {
		return nil, err
	}
	c := &Console{
		cfg: cfg, st: st, op: op, pages: pages,
		static:  http.StripPrefix("/static/", http.FileServerFS(static)),
		origins: http.NewCrossOriginProtection(),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if cfg.Dispatcher != nil {
		c.hist = newHistory(time.Now(), countsOf(cfg.Dispatcher))
		go func() {
			defer close(c.done)
			c.hist.sample(cfg.Dispatcher, sampleInterval, c.stop)
		}()
	} else {
		close(c.done)
	}
	return c, nil
}

// Close stops sampling the dispatcher's counters. The console keeps serving.
func (c *Console) Close() error {
	c.closeOnce.Do(func() { close(c.stop) })
	<-c.done
	return nil
}

var pageNames = []string{"overview", "parked", "key", "confirm", "done", "error"}

func parsePages() (map[string]*template.Template, error) {
	pages := map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, err
		}
		pages[name] = t
	}
	return pages, nil
}

// contentPolicy allows nothing but the console's own stylesheet and its forms: no script
// runs, whatever a payload holds.
const contentPolicy = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// ServeHTTP implements http.Handler.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", contentPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	if r.URL.Path == "" {
		// Mounted with StripPrefix("/outbox") and asked for "/outbox": the relative links
		// need the trailing slash.
		target := "./"
		if base := path.Base(strings.SplitN(r.RequestURI, "?", 2)[0]); base != "/" && base != "." {
			target = base + "/"
		}
		http.Redirect(w, r, target, http.StatusFound)
		return
	}
	if strings.HasPrefix(r.URL.Path, "/static/") {
		h.Set("Cache-Control", "public, max-age=3600")
		c.static.ServeHTTP(w, r)
		return
	}
	h.Set("Cache-Control", "no-store")
	ctx, cancel := context.WithTimeout(r.Context(), c.cfg.QueryTimeout)
	defer cancel()
	r = r.WithContext(ctx)
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		c.serveGet(w, r)
	case http.MethodPost:
		c.servePost(w, r)
	default:
		h.Set("Allow", "GET, HEAD, POST")
		c.fail(w, r, http.StatusMethodNotAllowed, "The console answers GET and POST only.")
	}
}

func (c *Console) serveGet(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/":
		c.overview(w, r)
	case "/parked":
		c.parked(w, r)
	case "/key":
		c.key(w, r)
	default:
		c.fail(w, r, http.StatusNotFound, "No such page.")
	}
}

func (c *Console) servePost(w http.ResponseWriter, r *http.Request) {
	if c.cfg.ReadOnly {
		c.fail(w, r, http.StatusForbidden, "This console is read-only: it changes nothing.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if why := c.refusal(r); why != "" {
		c.fail(w, r, http.StatusForbidden, "Refused: "+why+" Reload the console and try again.")
		return
	}
	switch r.URL.Path {
	case "/requeue":
		c.requeue(w, r)
	case "/purge":
		c.purge(w, r)
	default:
		c.fail(w, r, http.StatusNotFound, "No such action.")
	}
}

// page is what every template gets.
type page struct {
	Title    string
	Nav      string
	ReadOnly bool
	Token    string
	Data     any
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name, title string, data any) {
	p := page{Title: title, Nav: name, ReadOnly: c.cfg.ReadOnly, Data: data}
	if !c.cfg.ReadOnly {
		p.Token = c.token(w, r)
	}
	var b strings.Builder
	if err := c.pages[name].Execute(&b, p); err != nil {
		c.cfg.Logger.Error("outbox console: render page", "page", name, "error", err)
		http.Error(w, "the outbox console could not render this page; see the application's log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		w.Write([]byte(b.String()))
	}
}

func (c *Console) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	c.render(w, r, status, "error", "Error", msg)
}

// storeFailed logs err and shows a page that does not repeat it: a driver's error may name
// hosts, users or databases.
func (c *Console) storeFailed(w http.ResponseWriter, r *http.Request, what string, err error) {
	c.cfg.Logger.Error("outbox console: "+what, "error", err)
	status := http.StatusInternalServerError
	if errors.Is(err, context.DeadlineExceeded) {
		status = http.StatusGatewayTimeout
	}
	c.fail(w, r, status, "Could not "+what+": the store returned an error, which the application's log shows (\"outbox console: "+what+"\").")
}
