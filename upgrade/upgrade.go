// Package upgrade is Cablecar's WebSocket half: it holds a client's
// handshake while the app is asked whether to accept it (SPEC §2), and from
// the 101 on owns the socket — one writer, a bounded send queue, heartbeats
// from one shared ticker, limits — turning what the client sends into
// events for the callback package and delivering what the broker and the
// app's replies send back (SPEC §3–§5).
//
// It may touch the client's socket, the hub's registry and the broker; it
// reaches the app only through callback.Client.
package upgrade

import (
	"bytes"
	"context"
	"encoding/base64"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/pubsub"
)

// Config is what the WebSocket side needs; sidecar fills every field from
// the websocket and callback config sections.
type Config struct {
	PingInterval   time.Duration
	PongTimeout    time.Duration
	SendQueue      int   // messages
	SendQueueBytes int64 // payload bytes not yet written; 0 = 1 MiB
	MaxMessageSize int64 // bytes
	RatePerSecond  int   // 0 = unlimited
	RateBurst      int
	Origins        *auth.OriginPolicy
	// JWT, when set, verifies a token at the handshake before the app is
	// asked (SPEC §6); nil means no JWT checks.
	JWT            *auth.Verifier
	JWTLeeway      time.Duration // clock skew allowed on exp, after the handshake too
	ForwardHeaders []string      // handshake headers copied onto event requests
	Node           string        // this node's id, in every connection id; "" = a new one
	// Tracker, when set, keeps a record of the live connections where
	// other nodes can post their close events should this one die.
	Tracker Tracker
	// ActionCable is the actioncable section (SPEC §9).
	ActionCable ActionCableConfig
	// ShutdownGrace is how long shutdown waits for the replies to the
	// shutdown events (SPEC §5) before the 1012; 0 = no shutdown events.
	ShutdownGrace time.Duration

	// Zero means the default noted.
	WriteTimeout     time.Duration // one batch of writes to a client: 10s
	CloseTimeout     time.Duration // the client's answer to our close frame: 5s
	HandshakeTimeout time.Duration // writing the 101 after the app accepted: 10s
	BrokerTimeout    time.Duration // one broker call: 5s
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.WriteTimeout, 10*time.Second)
	def(&c.CloseTimeout, 5*time.Second)
	def(&c.HandshakeTimeout, 10*time.Second)
	def(&c.BrokerTimeout, 5*time.Second)
	if c.SendQueueBytes <= 0 {
		c.SendQueueBytes = 1 << 20
	}
	if c.RateBurst < 1 {
		c.RateBurst = 1
	}
}

// tick is the heartbeat's period: fine enough that a silent peer is found
// within a small part of the ping interval after pong_timeout, coarse
// enough that visiting every connection stays cheap.
func (c *Config) tick() time.Duration {
	t := c.PingInterval / 5
	return min(max(t, 20*time.Millisecond), time.Second)
}

// Prepare copies the client's handshake headers into the request for the
// app the way plain HTTP is forwarded (proxy.Proxy.PrepareHeaders), and
// returns the request id.
type Prepare func(ctx *fasthttp.RequestCtx, h *fasthttp.RequestHeader) string

// Server accepts WebSocket handshakes and runs the connections.
type Server struct {
	cfg      Config
	log      zerolog.Logger
	hub      *Hub
	cb       *callback.Client
	prepare  Prepare
	upgrader upgrader
	metrics  *metrics
}

// New builds the WebSocket server and starts its heartbeat. broker must be
// started with the returned server's Hub as its sink.
func New(cfg Config, log zerolog.Logger, reg prometheus.Registerer, cb *callback.Client, broker pubsub.Broker, prepare Prepare) *Server {
	cfg.setDefaults()
	m := newMetrics(reg)
	s := &Server{
		cfg:     cfg,
		log:     log,
		cb:      cb,
		prepare: prepare,
		metrics: m,
	}
	s.hub = newHub(cfg, log, broker, m)
	s.hub.cb = cb
	s.hub.ac = newHubAC(cfg.ActionCable, reg)
	s.upgrader = newUpgrader(cfg)
	s.hub.start()
	return s
}

var writePool websocketBufferPool

// Hub is the node's registry, the broker's sink.
func (s *Server) Hub() *Hub { return s.hub }

// Shutdown refuses new handshakes, closes every connection with 1012 and
// waits, until ctx ends, for them to end; the callback client's Wait then
// delivers their close events.
func (s *Server) Shutdown(ctx context.Context) error { return s.hub.Shutdown(ctx) }

// refuse answers a handshake that goes no further.
func (s *Server) refuse(ctx *fasthttp.RequestCtx, status int, reason, text string, log *zerolog.Event) {
	s.metrics.upgrades.WithLabelValues("rejected", reason).Inc()
	ctx.SetStatusCode(status)
	ctx.SetContentType("text/plain; charset=utf-8")
	ctx.SetBodyString(text + "\n")
	log.Str("reason", reason).Int("status", status).Msg("websocket refused")
}

// checkHandshake applies RFC 6455 §4.2.1 before anything is asked of the
// app: only a well-formed version-13 GET goes further.
func checkHandshake(ctx *fasthttp.RequestCtx) (status int, text string) {
	h := &ctx.Request.Header
	if !h.IsGet() {
		return fasthttp.StatusBadRequest, "400 Bad Request: a WebSocket handshake must be a GET"
	}
	if v := strings.TrimSpace(string(h.Peek("Sec-WebSocket-Version"))); v != "13" {
		ctx.Response.Header.Set("Sec-WebSocket-Version", "13")
		return fasthttp.StatusUpgradeRequired, "426 Upgrade Required: only WebSocket version 13 is supported"
	}
	key := bytes.TrimSpace(h.Peek("Sec-WebSocket-Key"))
	var raw [18]byte
	if len(key) != 24 {
		return fasthttp.StatusBadRequest, "400 Bad Request: Sec-WebSocket-Key must be 16 bytes, base64-encoded"
	}
	if n, err := base64.StdEncoding.Decode(raw[:], key); err != nil || n != 16 {
		return fasthttp.StatusBadRequest, "400 Bad Request: Sec-WebSocket-Key must be 16 bytes, base64-encoded"
	}
	return 0, ""
}
