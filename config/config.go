// Package config is where Cablecar's settings come from: built-in defaults,
// then an optional YAML file, then CABLECAR_* environment variables, then a
// few command-line flags, each layer overriding the one before.
//
// The defaults, the YAML keys and the environment names all come from the
// struct tags on Config and its sections, read by one reflective walker
// (schema.go), so there is a single table to keep in step with sidecar.yaml
// and docs/configuration.md (tests check both). Everything is validated at
// load time and any problem is reported as one line naming the key, the
// value (never a secret) and where the value came from.
//
// This package reads files and the environment it is given; it starts
// nothing and logs nothing. The parts that use a section (proxy, upgrade,
// callback, pubsub, auth) decide what its values mean at run time.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// Struct tags read by the schema walker:
//
//	key      the YAML key of this field within its section
//	default  the default, written as an environment variable would be
//	secret   "true": never printed (masked in Effective, hidden in errors)
//	check    extra validation of a string or list entry (see checks)
//	enum     "a|b|c": the accepted values, matched case-insensitively
//	min, max bounds for integers and sizes
//	size     "true": an int64 byte count that accepts KiB/MiB/GiB suffixes

// Config is everything Cablecar can be told. Its zero value is not useful;
// start from Default or Parse.
type Config struct {
	// Listen is the client-facing address, host:port. An empty host means
	// every interface.
	Listen string `key:"listen" default:":3000" check:"listen"`
	// Upstream is where the app listens.
	Upstream Upstream `key:"upstream" default:"http://127.0.0.1:3001"`
	// ShutdownTimeout bounds a graceful shutdown, from the first signal to
	// exit: closing WebSockets, delivering close webhooks, finishing
	// in-flight HTTP.
	ShutdownTimeout time.Duration `key:"shutdown_timeout" default:"25s"`

	Proxy     Proxy     `key:"proxy"`
	Admin     Admin     `key:"admin"`
	Broker    Broker    `key:"broker"`
	WebSocket WebSocket `key:"websocket"`
	Callback  Callback  `key:"callback"`
	Auth      Auth      `key:"auth"`
	// ActionCable is the `actioncable` section (SPEC §9).
	ActionCable ActionCable `key:"actioncable"`
	// History is the `history` section (SPEC §10).
	History History `key:"history"`
	// Presence is the `presence` section (SPEC §11).
	Presence Presence `key:"presence"`
	Log      Log      `key:"log"`
}

// Upstream is where the app listens: Network "tcp" with Address
// "host:port" (written http://host:port), or Network "unix" with Address
// the socket's path (written unix:/path/to/puma.sock).
type Upstream struct {
	Network string // "tcp" or "unix"
	Address string // "127.0.0.1:3001" or "/run/puma.sock"
}

// String gives the upstream back in the form the config accepts.
func (u Upstream) String() string {
	switch u.Network {
	case "tcp":
		return "http://" + u.Address
	case "unix":
		return "unix:" + u.Address
	}
	return ""
}

// Proxy is the plain-HTTP pass-through to the app.
type Proxy struct {
	// ConnectTimeout bounds dialing the app.
	ConnectTimeout time.Duration `key:"connect_timeout" default:"5s"`
	// ResponseTimeout is how long the app may be silent: before its
	// response headers (then the client gets 504) and between reads of a
	// streamed body, like nginx's proxy_read_timeout.
	ResponseTimeout time.Duration `key:"response_timeout" default:"60s"`
	// IdleTimeout closes pooled keep-alive connections to the app that
	// have been idle this long; keep it below the app server's own
	// (Puma's persistent_timeout is 20s) so Cablecar never reuses a
	// connection the app is about to close.
	IdleTimeout time.Duration `key:"idle_timeout" default:"10s"`
	// ClientIdleTimeout closes a client connection that sends nothing
	// (between requests, mid-headers, mid-upload) or accepts nothing
	// (mid-response) for this long.
	ClientIdleTimeout time.Duration `key:"client_idle_timeout" default:"120s"`
	// MaxConns caps the connections open to the app at once.
	MaxConns int `key:"max_conns" default:"1024" min:"1" max:"1000000"`
	// TrustedProxies are the peers whose X-Forwarded-Proto and
	// X-Forwarded-Host are kept; from anyone else they are replaced. An
	// empty list trusts no one.
	TrustedProxies []netip.Prefix `key:"trusted_proxies" default:"127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"`
	// HealthPath, when set, is the app path /readyz GETs (any status
	// below 500 is ready); empty means /readyz only checks that the app
	// accepts connections.
	HealthPath string `key:"health_path" default:"" check:"path"`
	// ClientBodyTimeout cuts a request body that sends nothing for this
	// long (nginx's client_body_timeout): 408 when no response has
	// started, so a trickling upload cannot hold an app connection.
	ClientBodyTimeout time.Duration `key:"client_body_timeout" default:"60s"`
	// MaxConnsPerClient caps the app connections one client address
	// (after trusted_proxies) holds at once; past it the client gets 503
	// with Retry-After. 0 means a quarter of max_conns.
	MaxConnsPerClient int `key:"max_conns_per_client" default:"0" min:"0" max:"1000000"`
}

// ConnsPerClient is the effective per-client cap: MaxConnsPerClient, or
// a quarter of MaxConns (at least 1) when it is 0.
func (p Proxy) ConnsPerClient() int {
	if p.MaxConnsPerClient > 0 {
		return p.MaxConnsPerClient
	}
	return max(1, p.MaxConns/4)
}

// Admin is the operator-facing listener (/publish, /send, /close,
// /metrics, /healthz, /readyz).
type Admin struct {
	// Listen is the admin address, host:port; empty disables the admin
	// listener.
	Listen string `key:"listen" default:"127.0.0.1:9394" check:"listen_or_empty"`
	// APIKey, when set, is required as "Authorization: Bearer <key>" on
	// the admin API; empty means no key is asked for.
	APIKey string `key:"api_key" default:"" secret:"true"`
}

// Broker carries broadcasts between nodes.
type Broker struct {
	// URL is empty for the in-memory broker (one node), or a redis://,
	// rediss:// or redis+sentinel:// URL.
	URL string `key:"url" default:"" check:"broker_url"`
	// Prefix is put before every channel name in Redis; empty means none.
	Prefix string `key:"prefix" default:"cablecar:" check:"broker_prefix"`
	// LeaseTTL is how long a node's lease lives without renewal; once it
	// lapses, another node sends the app the close events of its
	// connections.
	LeaseTTL time.Duration `key:"lease_ttl" default:"15s"`
}

// WebSocket governs each client connection once upgraded.
type WebSocket struct {
	// PingInterval is how often a ping frame is sent.
	PingInterval time.Duration `key:"ping_interval" default:"5s"`
	// PongTimeout closes a connection from which nothing at all has
	// arrived for this long; it must exceed PingInterval.
	PongTimeout time.Duration `key:"pong_timeout" default:"10s"`
	// SendQueue is how many messages may wait for a slow client before it
	// is closed as slow.
	SendQueue int `key:"send_queue" default:"256" min:"1" max:"1000000"`
	// SendQueueBytes bounds the bytes waiting for a slow client as well,
	// so memory per connection stays bounded whatever the messages' size.
	SendQueueBytes int64 `key:"send_queue_bytes" default:"1MiB" size:"true" min:"1KiB" max:"1GiB"`
	// MaxMessageSize is the largest message a client may send, in bytes.
	MaxMessageSize int64 `key:"max_message_size" default:"1MiB" size:"true" min:"1" max:"1GiB"`
	// RateLimit limits the messages a client may send.
	RateLimit RateLimit `key:"rate_limit"`
	// AllowedOrigins are the exact origins browsers may connect from, or
	// "*" for any; empty allows only the request's own host.
	AllowedOrigins []string `key:"allowed_origins" default:"" check:"origin"`
	// ShutdownGrace is how long, on shutdown, the replies to `shutdown`
	// events (Iodine's on_shutdown) have to be delivered before every
	// connection is closed with 1012; 0s sends no shutdown events.
	ShutdownGrace time.Duration `key:"shutdown_grace" default:"3s" zero:"ok"`
}

// RateLimit is a token bucket over the messages one client sends.
type RateLimit struct {
	// PerSecond is the sustained rate; 0 means unlimited.
	PerSecond int `key:"per_second" default:"50" min:"0" max:"1000000"`
	// Burst is how many messages may arrive at once above the rate.
	Burst int `key:"burst" default:"100" min:"1" max:"1000000"`
}

// Callback is every request Cablecar makes to the app (accept and events).
type Callback struct {
	// Timeout bounds each accept or event request.
	Timeout time.Duration `key:"timeout" default:"5s"`
	// Retries is how many attempts follow a failed first one; 0 means
	// none.
	Retries int `key:"retries" default:"3" min:"0" max:"100"`
	// Secret signs every callback (Cablecar-Signature); several allow
	// rotation; empty means callbacks are not signed.
	Secret []string `key:"secret" default:"" secret:"true"`
	// ForwardHeaders are the handshake's headers copied onto every event
	// request.
	ForwardHeaders []string `key:"forward_headers" default:"Cookie,Authorization" check:"header"`
	// MaxInFlight caps the event requests in flight to the app, over all
	// connections; while it is reached, the sockets waiting on it are not
	// read, so a struggling app is not stampeded and nothing piles up.
	MaxInFlight int `key:"max_in_flight" default:"256" min:"1" max:"100000"`
	// CloseRetryFor is how long a close event is retried (at most 30 s
	// between tries) before it is counted and logged as dropped.
	CloseRetryFor time.Duration `key:"close_retry_for" default:"1h"`
	// MaxPendingCloses bounds the close events waiting for the app on
	// this node; past it the oldest are dropped, counted and logged.
	MaxPendingCloses int `key:"max_pending_closes" default:"100000" min:"1" max:"10000000"`
}

// Auth is how handshakes are authenticated before the app is asked.
type Auth struct {
	JWT JWT `key:"jwt"`
}

// JWT verifies bearer tokens on the handshake.
type JWT struct {
	// Required answers 401 to a handshake without a valid token, without
	// asking the app; false lets tokenless handshakes through.
	Required bool `key:"required" default:"false"`
	// HMACSecret verifies HS256/384/512 tokens; several allow rotation;
	// empty means HMAC tokens are refused.
	HMACSecret []string `key:"hmac_secret" default:"" secret:"true"`
	// JWKSURL is where public keys are fetched from; empty means none.
	JWKSURL string `key:"jwks_url" default:"" check:"http_url"`
	// Issuer, when set, must equal the token's iss.
	Issuer string `key:"issuer" default:""`
	// Audience, when set, must be among the token's aud.
	Audience string `key:"audience" default:""`
	// QueryParam is the query parameter a token may come in.
	QueryParam string `key:"query_param" default:"token" check:"nonempty"`
	// Leeway is the clock skew allowed when checking exp and nbf.
	// 0s means none.
	Leeway time.Duration `key:"leeway" default:"30s" zero:"ok"`
}

// ActionCable governs the connections whose accept chose an ActionCable
// subprotocol (SPEC §9): @rails/actioncable, Turbo Streams and
// @anycable/web clients.
type ActionCable struct {
	// PingInterval is how often the protocol's own ping message
	// ({"type":"ping"}) is sent; @rails/actioncable reconnects after 6s
	// without one, so it must stay well below that.
	PingInterval time.Duration `key:"ping_interval" default:"3s"`
	// TurboStreamsSecret is Rails' config.turbo.signed_stream_verifier_key;
	// when set, Turbo::StreamsChannel and $pubsub subscribes with a signed
	// stream name are verified and confirmed by Cablecar without asking
	// the app. Empty: they reach the app like any subscribe.
	TurboStreamsSecret string `key:"turbo_streams_secret" default:"" secret:"true"`
	// PublicStreams confirms $pubsub subscribes with a plain stream_name
	// (@anycable/web's streamFrom) without asking the app; false: they
	// reach the app like any subscribe.
	PublicStreams bool `key:"public_streams" default:"false"`
	// SessionTTL is how long an actioncable-v1-ext-json session can be
	// restored after its socket ended (SPEC §10); 0s turns restore off.
	SessionTTL time.Duration `key:"session_ttl" default:"2m" zero:"ok"`
}

// History keeps the last messages of each channel so a client that
// reconnects can resume from its position (SPEC §10).
type History struct {
	// Size is how many messages each channel keeps; 0 keeps none.
	Size int `key:"size" default:"0" min:"0" max:"1000000"`
	// TTL is how long a recorded message is kept.
	TTL time.Duration `key:"ttl" default:"5m"`
	// Channels limits history to these channels (a trailing * matches
	// any suffix); empty means every channel.
	Channels []string `key:"channels" default:"" check:"channel_pattern"`
}

// Presence tracks who is in a channel across nodes (SPEC §11).
type Presence struct {
	// LeaveDelay is how long after its last connection dropped a presence
	// id leaves, so a blip or a reconnect race is not a leave.
	LeaveDelay time.Duration `key:"leave_delay" default:"5s" zero:"ok"`
	// CallbackPath, when set, is where every join and leave is POSTed to
	// the app; empty means none.
	CallbackPath string `key:"callback_path" default:"" check:"path"`
}

// Log is where and how much Cablecar logs.
type Log struct {
	// Level is the least severe level written.
	Level string `key:"level" default:"info" enum:"trace|debug|info|warn|error"`
	// Format is json, console, or auto (console when stderr is a
	// terminal, json otherwise).
	Format string `key:"format" default:"auto" enum:"auto|json|console"`
}

// Flags are the command-line switches that are not config keys.
type Flags struct {
	ConfigPath string // -config, or CABLECAR_CONFIG when -config is absent
	Check      bool   // -check: validate, print the effective config, exit
	Version    bool   // -version: print the version, exit

	// Warnings are problems that do not stop start-up, such as unknown
	// CABLECAR_* variables (the app's container may share the
	// environment), one line each, for the caller to log.
	Warnings []string
}

// Default returns the built-in configuration.
func Default() *Config {
	c := new(Config)
	applyDefaults(c)
	return c
}

// flagKeys are the config keys that also have a flag; usage's `quoted`
// word names the flag's argument in -h.
var flagKeys = []struct{ flag, key, usage string }{
	{"listen", "listen", "the `address` clients connect to, host:port"},
	{"upstream", "upstream", "the app's `url`: http://host:port or unix:/path/to/sock"},
	{"log-level", "log.level", "the least severe `level` logged: trace, debug, info, warn or error"},
}

// Parse builds the configuration from args (os.Args[1:] form), the file
// named by -config or CABLECAR_CONFIG (there is no implicit file), the
// CABLECAR_* variables in environ (os.Environ() form) and the key flags,
// in that order of precedence, lowest first, and validates the result.
//
// Any error's text is one line naming the key, the value and its source.
// For -h or -help, the usage is written to usageOut and flag.ErrHelp is
// returned. With -version nothing but the flags is read, so a broken
// config cannot stop the version from being printed.
func Parse(args []string, environ []string, usageOut io.Writer) (*Config, Flags, error) {
	cl := newCmdline()
	if err := cl.parse(args, usageOut); err != nil {
		return nil, cl.flags, err
	}
	if cl.flags.Version {
		return Default(), cl.flags, nil
	}
	c, err := cl.load(envMap(environ))
	return c, cl.flags, err
}

// cmdline is one parse of the command line.
type cmdline struct {
	fs        *flag.FlagSet
	flags     Flags
	overrides []*string       // the flagKeys flags' values, in flagKeys order
	set       map[string]bool // flags given, by name
}

func newCmdline() *cmdline {
	cl := &cmdline{fs: flag.NewFlagSet("cablecar", flag.ContinueOnError), set: map[string]bool{}}
	// The flag package would print errors and usage itself; errors are
	// returned as one line instead, and usage printed only when asked.
	cl.fs.SetOutput(io.Discard)
	cl.fs.Usage = func() {}
	cl.fs.StringVar(&cl.flags.ConfigPath, "config", "", "read the YAML config `file` (default: CABLECAR_CONFIG, else none)")
	cl.fs.BoolVar(&cl.flags.Check, "check", false, "validate the configuration, print it with secrets masked, and exit")
	cl.fs.BoolVar(&cl.flags.Version, "version", false, "print the version and exit")
	for _, fk := range flagKeys {
		usage := fmt.Sprintf("%s (key %s, env %s)", fk.usage, fk.key, lookupField(fk.key).env)
		cl.overrides = append(cl.overrides, cl.fs.String(fk.flag, "", usage))
	}
	return cl
}

func (cl *cmdline) parse(args []string, usageOut io.Writer) error {
	if err := cl.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(cl.fs, usageOut)
			return flag.ErrHelp
		}
		return fmt.Errorf("%v (run cablecar -h for usage)", err)
	}
	if cl.fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: not a verb, and the sidecar takes only flags (run cablecar help)", cl.fs.Arg(0))
	}
	cl.fs.Visit(func(f *flag.Flag) { cl.set[f.Name] = true })
	return nil
}

// load applies the layers above the defaults and checks the result.
func (cl *cmdline) load(env map[string]string) (*Config, error) {
	// Warnings first: when start-up fails, a misspelt variable may be why.
	cl.flags.Warnings = unknownEnv(env)
	l := newLoader()
	pathSource := "-config flag"
	if !cl.set["config"] {
		cl.flags.ConfigPath, pathSource = env[configEnv], configEnv
	}
	if cl.flags.ConfigPath != "" {
		if err := l.loadFile(cl.flags.ConfigPath, pathSource); err != nil {
			return nil, err
		}
	}
	if err := l.loadEnv(env); err != nil {
		return nil, err
	}
	for i, fk := range flagKeys {
		if cl.set[fk.flag] {
			if err := l.setScalar(lookupField(fk.key), *cl.overrides[i], "-"+fk.flag+" flag"); err != nil {
				return nil, err
			}
		}
	}
	if err := l.crossCheck(); err != nil {
		return nil, err
	}
	return l.cfg, nil
}

func printUsage(fs *flag.FlagSet, w io.Writer) {
	if w == nil {
		return
	}
	fmt.Fprint(w, `Usage: cablecar [flags]

Cablecar is a reverse-proxy sidecar that gives WebSockets to Rack apps.

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	fmt.Fprint(w, `
Every key of the config file can also be set in the environment as
CABLECAR_ + the key in capitals with dots as underscores, for example
CABLECAR_PROXY_CONNECT_TIMEOUT=10s or CABLECAR_BROKER_URL=redis://redis:6379/0.
Precedence, lowest first: defaults, config file, environment, flags.
See sidecar.yaml and docs/configuration.md for every key.
`)
}
