// Package proxy is Cablecar's plain-HTTP half: every request that is not a
// WebSocket upgrade goes to the app unchanged, streaming both ways, through
// one keep-alive pool (SPEC §1). It owns the front listener's fasthttp
// settings, the forwarding headers, the 502/504 mapping, the access log and
// the proxy metrics. It knows nothing of WebSockets: an upgrade request is
// handed to OnUpgrade.
package proxy

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/internal/appconn"
)

// smallBody is the largest response body of known length that is read whole
// rather than streamed.
const smallBody = 64 << 10

// Config is what the proxy needs; zero values are not defaults, the config
// package fills every field.
type Config struct {
	Network, Address  string        // "tcp", "127.0.0.1:3001" or "unix", "/run/puma.sock"
	ConnectTimeout    time.Duration // dialing the app
	ResponseTimeout   time.Duration // the app may be silent this long (before headers, between body reads)
	IdleTimeout       time.Duration // pooled app connections idle longer are closed
	ClientIdleTimeout time.Duration // a client that sends or accepts nothing this long is dropped
	MaxConns          int           // connections to the app at most
	TrustedProxies    []netip.Prefix
	HealthPath        string // "" = /readyz only dials the app
	// ClientBodyTimeout cuts a request body that sends nothing for this
	// long, measured between reads (nginx's client_body_timeout); 0 means
	// ClientIdleTimeout.
	ClientBodyTimeout time.Duration
	// MaxConnsPerClient caps the app connections one client address holds
	// at once; 0 means no cap. The config package passes the effective
	// value (a quarter of MaxConns unless set).
	MaxConnsPerClient int
	// SensitiveParams are query parameters whose values never reach a log
	// line, on top of the built-in list (token, secret, password…).
	SensitiveParams []string
}

// bodyTimeout is the silence a request body is allowed between reads.
func (c Config) bodyTimeout() time.Duration {
	if c.ClientBodyTimeout > 0 {
		return c.ClientBodyTimeout
	}
	return c.ClientIdleTimeout
}

func (c Config) upstreamName() string {
	if c.Network == "unix" {
		return "unix:" + c.Address
	}
	return "http://" + c.Address
}

// Proxy is the pass-through handler.
type Proxy struct {
	cfg       Config
	log       zerolog.Logger
	client    *fasthttp.HostClient
	dialer    *net.Dialer
	health    *http.Client
	metrics   *metrics
	sensitive map[string]bool
	limiter   *clientLimiter

	// OnUpgrade serves WebSocket handshakes (the sidecar sets upgrade's).
	// When nil, such requests are refused with 501, never half-proxied.
	OnUpgrade fasthttp.RequestHandler
}

// New builds the proxy and registers its metrics with reg.
func New(cfg Config, log zerolog.Logger, reg prometheus.Registerer) *Proxy {
	p := &Proxy{
		cfg:       cfg,
		log:       log,
		dialer:    &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second},
		metrics:   newMetrics(reg),
		sensitive: sensitiveSet(cfg.SensitiveParams),
		limiter:   newClientLimiter(cfg.MaxConnsPerClient),
	}
	p.client = newUpstreamClient(cfg, p.dialer, p.metrics.dials.Inc)
	p.health = newHealthClient(cfg, p.dialer)
	return p
}

// NewServer returns the front listener's server with the settings the
// pass-through depends on: request bodies streamed once they pass 64 KiB,
// multipart bodies not parsed, no headers of its own added to responses.
func NewServer(cfg Config, handler fasthttp.RequestHandler, log zerolog.Logger) *fasthttp.Server {
	bodyTimeout := cfg.bodyTimeout()
	return &fasthttp.Server{
		Handler: handler,
		// fasthttp reads up to 8 KiB of a body before the handler runs,
		// under the read deadline it set for the headers
		// (client_idle_timeout). A body that stalls there is cut after
		// client_body_timeout instead, with fasthttp's own 408; from the
		// handler on, requestBody measures the silence between reads.
		HeaderReceived: func(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
			if n := h.ContentLength(); n > 0 || n == -1 {
				return fasthttp.RequestConfig{ReadTimeout: bodyTimeout}
			}
			return fasthttp.RequestConfig{}
		},
		// A request's headers pass to the app as they came: the same
		// limit both ways.
		ReadBufferSize:               appconn.MaxHeaderBytes,
		WriteBufferSize:              16 << 10,
		StreamRequestBody:            true,
		MaxRequestBodySize:           64 << 10, // buffered below this, streamed above
		DisablePreParseMultipartForm: true,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		NoDefaultDate:                true,
		ReadTimeout:                  cfg.ClientIdleTimeout,
		WriteTimeout:                 cfg.ClientIdleTimeout,
		IdleTimeout:                  cfg.ClientIdleTimeout,
		CloseOnShutdown:              true,
		Logger:                       fasthttpLogger{log},

		// A WebSocket's hijack handler returns once the connection runs
		// on its own goroutine, so that fasthttp's read buffer and request
		// are freed (upgrade/hijack.go); the connection closes its socket.
		KeepHijackedConns: true,
	}
}

// Close drops the idle connections of the pool.
func (p *Proxy) Close() { p.client.CloseIdleConnections() }

// ServeHTTP is the fasthttp handler for the front listener.
func (p *Proxy) ServeHTTP(ctx *fasthttp.RequestCtx) {
	h := &ctx.Request.Header
	if len(h.Host()) == 0 {
		// HTTP/1.1 requires Host (RFC 9112 §3.2); HTTP/1.0 did not, but
		// without one the app cannot tell which site was meant.
		p.refuse(ctx, fasthttp.StatusBadRequest, "no_host", "400 Bad Request: the request has no Host header\n")
		return
	}
	if framingConflict(h) {
		ctx.SetConnectionClose()
		p.refuse(ctx, fasthttp.StatusBadRequest, "framing",
			"400 Bad Request: Content-Length and Transfer-Encoding may not be sent together\n")
		return
	}
	client := p.clientAddr(remoteAddr(ctx), h)
	if !p.limiter.acquire(client) {
		p.metrics.clientLimits[limitTooManyConns].Inc()
		ctx.Response.Header.Set("Retry-After", tooManyConnsRetryAfter)
		p.refuse(ctx, fasthttp.StatusServiceUnavailable, "too_many_conns", tooManyConnsText)
		return
	}
	if IsWebSocketUpgrade(h) {
		// The accept callback holds an app connection while the app
		// decides; once OnUpgrade returns, the WebSocket holds none.
		defer p.limiter.release(client)
		if p.OnUpgrade != nil {
			p.OnUpgrade(ctx)
			return
		}
		p.refuse(ctx, fasthttp.StatusNotImplemented, "not_implemented",
			"501 Not Implemented: this Cablecar build does not accept WebSocket upgrades yet\n")
		return
	}

	ex := acquireExchange(p, ctx)
	ex.client, ex.held = client, true
	req := fasthttp.AcquireRequest()
	p.prepare(ctx, req, ex)
	resp := fasthttp.AcquireResponse()
	err := p.client.Do(req, resp)
	fasthttp.ReleaseRequest(req)
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		p.fail(ctx, ex, err)
		return
	}
	ex.headersAt = time.Now()
	unread := bodyUnread(ctx, &ex.reqBody)
	p.respond(ctx, resp, ex) // ex may be released from here on
	if unread {
		ctx.SetConnectionClose()
	}
}

// prepare copies the client's request into req, minus what must not pass.
func (p *Proxy) prepare(ctx *fasthttp.RequestCtx, req *fasthttp.Request, ex *exchange) {
	ctx.Request.Header.CopyTo(&req.Header)
	req.UseHostHeader = true
	h := &req.Header
	// Body framing is fasthttp's job on each side; Expect was answered by
	// our server already.
	stripRequestHeaders(h)
	h.Del("Expect")
	h.ResetConnectionClose()
	p.setForwarded(ctx, h)
	ex.requestID = requestID(&ctx.Request.Header, ex.requestID[:0])
	h.SetBytesV("X-Request-Id", ex.requestID)

	if n := ctx.Request.Header.ContentLength(); n > 0 || n == -1 {
		ex.reqBody = requestBody{r: ctx.RequestBodyStream(), conn: ctx.Conn(), timeout: p.cfg.bodyTimeout()}
		req.SetBodyStream(&ex.reqBody, n)
	}
}

// respond sends the app's response back, its body streamed as it arrives.
func (p *Proxy) respond(ctx *fasthttp.RequestCtx, resp *fasthttp.Response, ex *exchange) {
	out := &ctx.Response
	resp.Header.CopyTo(&out.Header)
	stripResponseHeaders(&out.Header)
	out.Header.ResetConnectionClose()
	ex.status = resp.StatusCode()

	body := resp.BodyStream()
	if body == nil || ctx.IsHead() {
		if body != nil {
			_ = resp.CloseBodyStream()
		}
		// Keep the app's Content-Length on HEAD; there is no body to copy.
		n := resp.Header.ContentLength()
		fasthttp.ReleaseResponse(resp)
		out.SkipBody = ctx.IsHead()
		if n >= 0 {
			out.Header.SetContentLength(n)
		}
		p.finish(ctx, ex, nil)
		return
	}
	n := resp.Header.ContentLength()
	if n >= 0 && n <= smallBody {
		// Small bodies of known length are read whole and sent with their
		// headers in one write: cheaper than the streaming machinery, and
		// the memory is bounded by smallBody.
		if cap(ex.scratch) < n {
			ex.scratch = make([]byte, n, smallBody)
		}
		_, err := io.ReadFull(body, ex.scratch[:n])
		_ = resp.CloseBodyStream()
		fasthttp.ReleaseResponse(resp)
		if err != nil {
			p.fail(ctx, ex, err)
			return
		}
		out.SetBody(ex.scratch[:n])
		ex.bytes = int64(n)
		p.finish(ctx, ex, nil)
		return
	}
	if n < 0 {
		n = -1 // chunked to the client, also for a close-delimited app body
	}
	ex.resp = resp
	ex.body = body
	ex.conn = ctx.Conn()
	out.SetBodyStream(ex, n)
}

// fail answers for an app that could not: 502, 503 or 504, one line of text;
// or for a client whose body broke off: 400, or 408 when it went silent.
func (p *Proxy) fail(ctx *fasthttp.RequestCtx, ex *exchange, err error) {
	f := classify(err)
	switch f {
	case failBodyTimeout, failBadRequest:
		// The client's doing, not the app's, so not a warning a client
		// could fill the log with. fasthttp closed the app connection
		// when writing the body failed: Puma drops the half-received
		// request and the pool has the slot back.
		if f == failBodyTimeout {
			p.metrics.clientLimits[limitBodyTimeout].Inc()
		} else {
			p.metrics.upstreamErrors.WithLabelValues(f.reason).Inc()
		}
		p.log.Info().Str("reason", f.reason).Err(err).Dur("client_body_timeout_ms", p.cfg.bodyTimeout()).
			Bytes("request_id", ex.requestID).Stringer("remote", ex.remote).
			Msg("request body cut short by the client")
	default:
		p.metrics.upstreamErrors.WithLabelValues(f.reason).Inc()
		p.log.Warn().Str("reason", f.reason).Err(err).
			Str("upstream", p.cfg.upstreamName()).Bytes("request_id", ex.requestID).
			Msg("app did not answer")
	}
	ctx.Response.Reset()
	ctx.SetStatusCode(f.status)
	ctx.SetContentType("text/plain; charset=utf-8")
	ctx.SetBodyString(f.text)
	if bodyUnread(ctx, &ex.reqBody) {
		ctx.SetConnectionClose()
	}
	ex.status = f.status
	ex.bytes = int64(len(f.text))
	p.finish(ctx, ex, nil)
}

// refuse answers a request the proxy will not pass on. Its body, if it has
// one, is not read, so the connection is closed after the answer.
func (p *Proxy) refuse(ctx *fasthttp.RequestCtx, status int, reason, text string) {
	if bodyUnread(ctx, nil) {
		ctx.SetConnectionClose()
	}
	ex := acquireExchange(p, ctx)
	ex.requestID = requestID(&ctx.Request.Header, ex.requestID[:0])
	ctx.SetStatusCode(status)
	ctx.SetContentType("text/plain; charset=utf-8")
	ctx.SetBodyString(text)
	ex.status = status
	ex.bytes = int64(len(text))
	p.log.Debug().Str("reason", reason).Bytes("request_id", ex.requestID).Msg("request refused")
	p.finish(ctx, ex, nil)
}

// finish writes the access-log line and the metrics of one exchange.
func (p *Proxy) finish(ctx *fasthttp.RequestCtx, ex *exchange, werr error) {
	if ex.headersAt.IsZero() {
		ex.headersAt = time.Now()
	}
	p.metrics.observe(ex.status, ex.headersAt.Sub(ex.start))
	if ex.held {
		p.limiter.release(ex.client)
	}
	if e := p.log.Info(); e.Enabled() {
		e.Bytes("method", ex.method).
			Bytes("path", ex.path)
		if len(ex.query) > 0 {
			e.Bytes("query", redactQuery(ex.query, p.sensitive, ex.scratch[:0]))
		}
		e.Int("status", ex.status).
			Int64("bytes", ex.bytes).
			Dur("duration_ms", time.Since(ex.start)).
			Bytes("request_id", ex.requestID).
			Stringer("remote", ex.remote)
		if werr != nil {
			e.AnErr("stream_error", werr)
		}
		e.Msg("request")
	}
	releaseExchange(ex)
}

// exchange is one proxied request, from arrival to the last body byte. It is
// the response body the server reads from, so that the access log can be
// written when the stream really ends, with the bytes that were sent.
type exchange struct {
	p         *Proxy
	start     time.Time
	headersAt time.Time
	method    []byte
	path      []byte
	query     []byte
	scratch   []byte
	remote    netip.Addr
	client    netip.Addr // what the per-client cap counts: remote, or the client behind a trusted proxy
	held      bool       // a per-client slot is held until finish
	requestID []byte
	status    int
	bytes     int64

	reqBody requestBody
	resp    *fasthttp.Response
	body    io.Reader
	bodyErr error // why reading the app's body failed, if it did
	conn    net.Conn
	// writeDeadline is the client connection's, moved as the body flows.
	writeDeadline lazyDeadline
	ctx           *fasthttp.RequestCtx
}

var exchanges = sync.Pool{New: func() any { return &exchange{requestID: make([]byte, 0, 64)} }}

func acquireExchange(p *Proxy, ctx *fasthttp.RequestCtx) *exchange {
	ex := exchanges.Get().(*exchange)
	ex.p = p
	ex.ctx = ctx
	ex.start = ctx.Time()
	ex.method = append(ex.method[:0], ctx.Method()...)
	uri := ctx.Request.Header.RequestURI()
	path, query := uri, []byte(nil)
	for i, c := range uri {
		if c == '?' {
			path, query = uri[:i], uri[i+1:]
			break
		}
	}
	ex.path = append(ex.path[:0], path...)
	ex.query = append(ex.query[:0], query...)
	ex.remote = remoteAddr(ctx)
	return ex
}

func releaseExchange(ex *exchange) {
	*ex = exchange{
		method: ex.method[:0], path: ex.path[:0], query: ex.query[:0],
		scratch: ex.scratch[:0], requestID: ex.requestID[:0],
	}
	exchanges.Put(ex)
}

// Read feeds the client's response from the app's body. After each read the
// client's write deadline moves on: a client that stops accepting data for
// client_idle_timeout is dropped, a long stream that keeps moving never is.
func (ex *exchange) Read(b []byte) (int, error) {
	n, err := ex.body.Read(b)
	ex.bytes += int64(n)
	if n > 0 {
		ex.writeDeadline.extend(ex.conn.SetWriteDeadline, ex.p.cfg.ClientIdleTimeout)
	}
	if err != nil && err != io.EOF {
		ex.bodyErr = err
	}
	return n, err
}

// CloseWithError is called by fasthttp once the body is written or the
// client went away; it returns the app connection to the pool (or drops it
// when the body was not read to its end) and logs the exchange.
func (ex *exchange) CloseWithError(werr error) error {
	_ = ex.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(ex.resp)
	if ex.bodyErr != nil {
		// The app's side broke mid-body: the client got a truncated
		// response, and an operator should hear why.
		f := classify(ex.bodyErr)
		ex.p.metrics.upstreamErrors.WithLabelValues(f.reason).Inc()
		ex.p.log.Warn().Str("reason", f.reason).Err(ex.bodyErr).Bytes("request_id", ex.requestID).
			Int64("bytes", ex.bytes).Msg("app response cut short")
	}
	// A write error alone means the client went away: routine for streams.
	ex.p.finish(ex.ctx, ex, werr)
	return nil
}

// requestBody streams the client's body to the app, moving the client's
// read deadline after every read so that an upload may take as long as it
// needs while it keeps moving, and one that stops for client_body_timeout
// is cut. The first read sets a fresh deadline, so that time spent waiting
// for an app connection is never counted against the client.
type requestBody struct {
	r        io.Reader
	conn     net.Conn
	timeout  time.Duration
	deadline lazyDeadline
	eof      bool // read to its end: nothing of it is left on the connection
}

// clientReadError marks a failure to read the client's body, so it is not
// blamed on the app.
type clientReadError struct{ err error }

func (e *clientReadError) Error() string { return "reading client body: " + e.err.Error() }
func (e *clientReadError) Unwrap() error { return e.err }

func (b *requestBody) Read(p []byte) (int, error) {
	b.deadline.extend(b.conn.SetReadDeadline, b.timeout)
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.eof = true
	} else if err != nil {
		err = &clientReadError{err: err}
	}
	return n, err
}

type fasthttpLogger struct{ log zerolog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug().Msgf(format, args...)
}
