// Package callback is every request Cablecar makes to the app: the accept
// GET of a handshake (SPEC §2) and the ordered event webhooks of each
// connection (SPEC §3), signed as SPEC §6 says. It owns the one keep-alive
// pool to the app used for them, the global cap on event requests in
// flight, retries and their backoff, and the parsing of the app's replies.
//
// It knows connections only through Target: it never touches a socket, a
// broker or a subscription. What a reply asks for is handed back to the
// Target to carry out.
package callback

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/internal/appconn"
	"github.com/cablecar/cablecar/registry"
)

// Defaults for the zero values of Config. The sidecar passes every value a
// config key sets; the defaults of those keys are config's, and these must
// equal them (TestDefaultsMatchConfig).
const (
	defaultTimeout       = 5 * time.Second
	defaultMaxInFlight   = 256
	defaultMaxReplySize  = 1 << 20
	defaultCloseRetryFor = time.Hour
	// The close events waiting for the app, on this node, at most.
	defaultMaxPendingCloses = 100000
	// Backoff between attempts of an event request: from base, doubling, to
	// cap, with jitter; a Retry-After from the app is obeyed up to
	// retryAfterCap, so that one bad header cannot park a connection.
	defaultBackoffBase   = 100 * time.Millisecond
	defaultBackoffCap    = 5 * time.Second
	defaultRetryAfterCap = 30 * time.Second
	// A close event is retried for CloseRetryFor with at most this long
	// between tries (SPEC §3), Retry-After included.
	defaultCloseBackoffCap = 30 * time.Second
	// Pooled connections idle longer are closed before Puma's own
	// persistent_timeout (20 s) closes them under us.
	idleConnTimeout = 10 * time.Second
)

// Config is what the client needs. Every field says what its zero value
// means.
type Config struct {
	Network, Address string        // "tcp","127.0.0.1:3001" or "unix","/run/puma.sock"
	ConnectTimeout   time.Duration // dialing the app; 0 → Timeout
	Timeout          time.Duration // per request (accept or events), whole request incl. body; 0 → 5 s
	Retries          int           // attempts after the first for open/message batches; < 0 → 0
	Secrets          []string      // callback.secret; empty = unsigned
	MaxInFlight      int           // global cap on event requests in flight (all connections); 0 → 256
	MaxReplySize     int           // largest reply body read from the app; 0 → 1 MiB
	CloseRetryFor    time.Duration // how long a batch holding a close event keeps being retried; 0 → 1 h
	MaxPendingCloses int           // close events waiting to be retried, at most; past it the oldest are dropped; 0 → 100000
	CloseBackoffCap  time.Duration // longest pause between tries of a close event, Retry-After included; 0 → 30 s
	// MaxConns caps the connections to the app, accept and event requests
	// together; 0 → 2×MaxInFlight. Accepts beyond it wait for a free
	// connection within their Timeout.
	MaxConns int
}

func (cfg Config) withDefaults() Config {
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = cfg.Timeout
	}
	cfg.Retries = max(cfg.Retries, 0)
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = defaultMaxInFlight
	}
	if cfg.MaxReplySize <= 0 {
		cfg.MaxReplySize = defaultMaxReplySize
	}
	if cfg.CloseRetryFor <= 0 {
		cfg.CloseRetryFor = defaultCloseRetryFor
	}
	if cfg.MaxPendingCloses <= 0 {
		cfg.MaxPendingCloses = defaultMaxPendingCloses
	}
	if cfg.CloseBackoffCap <= 0 {
		cfg.CloseBackoffCap = defaultCloseBackoffCap
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 2 * cfg.MaxInFlight
	}
	return cfg
}

// Errors of Accept, to be inspected with errors.Is.
var (
	// ErrUnreachable: the app could not be connected to, or every
	// connection to it stayed busy (the handshake is answered 503).
	ErrUnreachable = errors.New("callback: app unreachable")
	// ErrTimeout: the app did not answer within Timeout (504).
	ErrTimeout = errors.New("callback: app did not answer in time")
	// ErrInvalidReply: a 2xx reply could not be used; see ParseReply.
	ErrInvalidReply = errors.New("callback: invalid reply")
)

// Client sends the app every callback. One Client serves all connections.
type Client struct {
	cfg    Config
	log    zerolog.Logger
	hc     *fasthttp.HostClient
	signer *auth.Signer
	m      *metrics
	host   string // Host header when the caller gave none

	// slots is the global cap: a request holds one while it waits for
	// the app's answer, never while it backs off.
	slots chan struct{}

	// Tests shorten these.
	backoffBase, backoffCap, retryAfterCap time.Duration
	closeBackoffCap                        time.Duration

	// closes holds the close events being retried; closing is every
	// close event not yet delivered, by connection.
	closes  *closeQueue
	closing closingSet
	// pub is where the replies to retried close events publish.
	pub Publisher
	// numbered, when set, hears of each close event as it is numbered
	// (the registry records it, so that a survivor posts that very event,
	// same id, should this node die before the app took it).
	numbered func(id string, ev registry.CloseEvent)

	mu   sync.Mutex
	live int           // streams not Done
	idle chan struct{} // closed when live drops to 0; made by Wait
	// abort is closed when Wait's ctx ends: from then on nothing more is
	// delivered, and what is left is dropped and counted.
	abort     chan struct{}
	abortOnce sync.Once
}

// New builds the client and registers its metrics with reg.
func New(cfg Config, log zerolog.Logger, reg prometheus.Registerer) *Client {
	cfg = cfg.withDefaults()
	c := &Client{
		cfg:           cfg,
		log:           log,
		signer:        auth.NewSigner(cfg.Secrets),
		m:             newMetrics(reg),
		slots:         make(chan struct{}, cfg.MaxInFlight),
		backoffBase:   defaultBackoffBase,
		backoffCap:    defaultBackoffCap,
		retryAfterCap: defaultRetryAfterCap,
		abort:         make(chan struct{}),
	}
	c.closeBackoffCap = cfg.CloseBackoffCap
	c.closes = newCloseQueue(c, cfg.MaxPendingCloses)
	c.host = cfg.Address
	if cfg.Network == "unix" {
		c.host = "localhost"
	}
	c.hc = c.newHostClient()
	return c
}

func (c *Client) newHostClient() *fasthttp.HostClient {
	network, address := c.cfg.Network, c.cfg.Address
	hc := appconn.NewHostClient(appconn.Pool{
		Network: network,
		Address: address,
		Dial: func(timeout time.Duration) (net.Conn, error) {
			// timeout is what is left of the request's; the dial gets no
			// more than ConnectTimeout of it.
			if timeout <= 0 || timeout > c.cfg.ConnectTimeout {
				timeout = c.cfg.ConnectTimeout
			}
			return net.DialTimeout(network, address, timeout)
		},
		MaxConns:    c.cfg.MaxConns,
		MaxConnWait: c.cfg.Timeout,
		IdleTimeout: idleConnTimeout,
		// Resending a request whose pooled connection the app had closed
		// is safe for the accept GET, and for event POSTs too: their
		// event ids let the app drop what it has seen.
		RetryIfErr: appconn.RetryStale,
	})
	hc.MaxResponseBodySize = c.cfg.MaxReplySize
	return hc
}

// SetPublisher says where the reply to a close event that had to wait
// publishes (the broker): the connection is gone by then, and of its reply
// only publish has anything left to act on. Without one, such a reply's
// publish is dropped. Call it before any stream starts.
func (c *Client) SetPublisher(p Publisher) { c.pub = p }

// OnCloseNumbered sets f to hear of every close event of this node's
// connections as it is given its number. f is called with the stream's
// lock held: it must be quick and must not call back into the client. Set
// it before the first stream is made.
func (c *Client) OnCloseNumbered(f func(id string, ev registry.CloseEvent)) { c.numbered = f }

// Close drops the idle connections to the app.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Accept signs req (payload auth.AcceptPayload: "GET <path and
// query>\n<connection id>\n<claims or empty>", SPEC §6) and sends it to
// the app, filling resp. req is fully prepared by the caller (method, URI,
// headers incl. Host, Cablecar-Connection-Id and Cablecar-Claims). One
// attempt, no retry.
//
// Errors wrap ErrUnreachable (dial failed or refused: the caller answers
// 503) or ErrTimeout (504); any other error is a broken answer (502-ish,
// the caller decides). A reply body over MaxReplySize is such an error.
func (c *Client) Accept(req *fasthttp.Request, resp *fasthttp.Response) error {
	req.UseHostHeader = true
	if len(req.Header.Host()) == 0 {
		req.Header.SetHost(c.host)
	}
	if c.signer.Enabled() {
		// Sign exactly the request target fasthttp will write (the path as
		// given: normalizing is off), and the id and claims headers as the
		// app will read them.
		uri := req.URI()
		uri.DisablePathNormalizing = true
		payload := auth.AcceptPayload(uri.RequestURI(),
			req.Header.Peek("Cablecar-Connection-Id"), req.Header.Peek("Cablecar-Claims"))
		req.Header.Set(auth.SignatureHeader, c.signer.Sign(time.Now(), payload))
	} else {
		// Only Cablecar signs; a client's own header must not pass for one.
		req.Header.Del(auth.SignatureHeader)
	}
	start := time.Now()
	err := c.hc.DoTimeout(req, resp, c.cfg.Timeout)
	elapsed := time.Since(start)
	c.m.duration[kindAccept].Observe(elapsed.Seconds())

	o := outcomeOK
	switch status := resp.StatusCode(); {
	case err != nil:
		o = errOutcome(err)
		if o == outcomeFailed && appconn.ConnLost(err) {
			// Right after the app died every pooled connection fails
			// so, and the one retry may meet another before a dial is
			// tried: the app is unreachable (503), as a refused dial says.
			o = outcomeUnreachable
		}
	case status >= 500:
		o = outcomeFailed
	case status < 200 || status >= 300:
		// Relayed to the client as it is: the app's decision.
		o = outcomeRejected
	}
	c.m.webhooks[kindAccept][o].Inc()
	if err != nil {
		c.log.Warn().Err(err).Str("outcome", outcomeNames[o]).Dur("duration_ms", elapsed).Msg("accept callback failed")
	} else {
		c.log.Debug().Str("outcome", outcomeNames[o]).Int("status", resp.StatusCode()).
			Dur("duration_ms", elapsed).Msg("accept callback")
	}

	switch {
	case err == nil:
		return nil
	case o == outcomeUnreachable:
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	case o == outcomeTimeout:
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return fmt.Errorf("%w: body over %d bytes", ErrInvalidReply, c.cfg.MaxReplySize)
	default:
		return fmt.Errorf("callback: accept: %w", err)
	}
}

// Wait blocks until every stream of the client is Done, close events
// waiting to be retried included, or ctx ends (graceful shutdown). When
// ctx ends first, what is still undelivered is dropped and counted, one
// line logs how many close events this node could not deliver (see
// Undelivered), and ctx.Err() is returned. Wait does not stop new streams
// from being made.
func (c *Client) Wait(ctx context.Context) error {
	for {
		c.mu.Lock()
		if c.live == 0 {
			c.mu.Unlock()
			return nil
		}
		if c.idle == nil {
			c.idle = make(chan struct{})
		}
		idle := c.idle
		c.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			c.abortOnce.Do(func() { close(c.abort) })
			c.mu.Lock()
			n := c.live
			c.mu.Unlock()
			if n > 0 {
				c.log.Error().Int("close_events", c.closing.len()).Int("connections", n).
					Msg("shutdown: close events not delivered to the app in time (cablecar_close_events_abandoned_total); other events of these connections are dropped")
			}
			return ctx.Err()
		}
	}
}

func (c *Client) streamStarted() {
	c.mu.Lock()
	c.live++
	c.mu.Unlock()
}

func (c *Client) streamDone() {
	c.mu.Lock()
	c.live--
	if c.live == 0 && c.idle != nil {
		close(c.idle)
		c.idle = nil
	}
	c.mu.Unlock()
}

// acquire takes a slot of the global cap; false when abort ended first.
func (c *Client) acquire(abort <-chan struct{}) bool {
	select {
	case c.slots <- struct{}{}:
		return true
	case <-abort:
		return false
	}
}

func (c *Client) release() { <-c.slots }

// errOutcome says what a failed round trip means. A dial that timed out
// is unreachable, not slow: the app never got the request.
func errOutcome(err error) outcome {
	switch {
	case appconn.IsDial(err), errors.Is(err, fasthttp.ErrNoFreeConns):
		return outcomeUnreachable
	case appconn.IsTimeout(err):
		return outcomeTimeout
	default:
		return outcomeFailed
	}
}

// statusOutcome says what the status of an events reply means.
func statusOutcome(status int) outcome {
	switch {
	case status >= 200 && status < 300:
		return outcomeOK
	case status == fasthttp.StatusGone:
		return outcomeGone
	case status == fasthttp.StatusTooManyRequests || status >= 500:
		return outcomeFailed
	default:
		return outcomeRejected
	}
}
