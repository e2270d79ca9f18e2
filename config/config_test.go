package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeConfig writes a config file in a fresh directory and returns its
// path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDefault(t *testing.T) {
	c := Default()
	checks := []struct {
		key       string
		got, want any
	}{
		{"listen", c.Listen, ":3000"},
		{"upstream", c.Upstream, Upstream{Network: "tcp", Address: "127.0.0.1:3001"}},
		{"shutdown_timeout", c.ShutdownTimeout, 25 * time.Second},
		{"proxy.connect_timeout", c.Proxy.ConnectTimeout, 5 * time.Second},
		{"proxy.response_timeout", c.Proxy.ResponseTimeout, 60 * time.Second},
		{"proxy.idle_timeout", c.Proxy.IdleTimeout, 10 * time.Second},
		{"proxy.client_idle_timeout", c.Proxy.ClientIdleTimeout, 120 * time.Second},
		{"proxy.max_conns", c.Proxy.MaxConns, 1024},
		{"proxy.trusted_proxies", c.Proxy.TrustedProxies, []netip.Prefix{
			netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"),
			netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("172.16.0.0/12"),
			netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("fc00::/7")}},
		{"proxy.health_path", c.Proxy.HealthPath, ""},
		{"admin.listen", c.Admin.Listen, "127.0.0.1:9394"},
		{"admin.api_key", c.Admin.APIKey, ""},
		{"broker.url", c.Broker.URL, ""},
		{"broker.prefix", c.Broker.Prefix, "cablecar:"},
		{"broker.lease_ttl", c.Broker.LeaseTTL, 15 * time.Second},
		{"websocket.ping_interval", c.WebSocket.PingInterval, 5 * time.Second},
		{"websocket.pong_timeout", c.WebSocket.PongTimeout, 10 * time.Second},
		{"websocket.send_queue", c.WebSocket.SendQueue, 256},
		{"websocket.max_message_size", c.WebSocket.MaxMessageSize, int64(1 << 20)},
		{"websocket.rate_limit", c.WebSocket.RateLimit, RateLimit{PerSecond: 50, Burst: 100}},
		{"websocket.allowed_origins", c.WebSocket.AllowedOrigins, []string(nil)},
		{"callback.timeout", c.Callback.Timeout, 5 * time.Second},
		{"callback.retries", c.Callback.Retries, 3},
		{"callback.secret", c.Callback.Secret, []string(nil)},
		{"callback.forward_headers", c.Callback.ForwardHeaders, []string{"Cookie", "Authorization"}},
		{"auth.jwt", c.Auth.JWT, JWT{QueryParam: "token", Leeway: 30 * time.Second}},
		{"actioncable", c.ActionCable, ActionCable{PingInterval: 3 * time.Second, SessionTTL: 2 * time.Minute}},
		{"log", c.Log, Log{Level: "info", Format: "auto"}},
	}
	for _, ck := range checks {
		if !reflect.DeepEqual(ck.got, ck.want) {
			t.Errorf("%s = %#v, want %#v", ck.key, ck.got, ck.want)
		}
	}
}

// Parse with nothing set gives the defaults, validated.
func TestParseNothing(t *testing.T) {
	c, fl, err := Parse(nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("Parse() = %+v, want Default()", c)
	}
	if fl.ConfigPath != "" || fl.Check || fl.Version || len(fl.Warnings) != 0 {
		t.Errorf("flags = %+v, want zero", fl)
	}
}

func TestPrecedence(t *testing.T) {
	path := writeConfig(t, `
listen: ":4000"
upstream: "http://app:4001"
proxy: {connect_timeout: 2s, response_timeout: 30s}
log:
  level: debug
  format: json
websocket:
  rate_limit: {per_second: 10}
`)
	tests := []struct {
		name    string
		args    []string
		environ []string
		check   func(*Config) []string // returns mismatches
	}{
		{
			name: "file over defaults",
			args: []string{"-config", path},
			check: func(c *Config) []string {
				return diffs(
					"listen", c.Listen, ":4000",
					"upstream", c.Upstream.String(), "http://app:4001",
					"connect_timeout", c.Proxy.ConnectTimeout, 2*time.Second,
					"response_timeout", c.Proxy.ResponseTimeout, 30*time.Second,
					"idle_timeout (default)", c.Proxy.IdleTimeout, 10*time.Second,
					"per_second", c.WebSocket.RateLimit.PerSecond, 10,
					"burst (default)", c.WebSocket.RateLimit.Burst, 100,
					"level", c.Log.Level, "debug")
			},
		},
		{
			name:    "env over file",
			args:    []string{"-config", path},
			environ: []string{"CABLECAR_LISTEN=:5000", "CABLECAR_PROXY_CONNECT_TIMEOUT=3s", "CABLECAR_LOG_LEVEL=warn"},
			check: func(c *Config) []string {
				return diffs(
					"listen", c.Listen, ":5000",
					"connect_timeout", c.Proxy.ConnectTimeout, 3*time.Second,
					"response_timeout (file)", c.Proxy.ResponseTimeout, 30*time.Second,
					"level", c.Log.Level, "warn",
					"format (file)", c.Log.Format, "json")
			},
		},
		{
			name:    "flags over env",
			args:    []string{"-config", path, "-listen", "127.0.0.1:6000", "-upstream=unix:/run/puma.sock", "-log-level", "ERROR"},
			environ: []string{"CABLECAR_LISTEN=:5000", "CABLECAR_UPSTREAM=http://x:1", "CABLECAR_LOG_LEVEL=warn"},
			check: func(c *Config) []string {
				return diffs(
					"listen", c.Listen, "127.0.0.1:6000",
					"upstream", c.Upstream, Upstream{Network: "unix", Address: "/run/puma.sock"},
					"level", c.Log.Level, "error")
			},
		},
		{
			name:    "CABLECAR_CONFIG names the file",
			environ: []string{"CABLECAR_CONFIG=" + path},
			check: func(c *Config) []string {
				return diffs("listen", c.Listen, ":4000")
			},
		},
		{
			name:    "-config wins over CABLECAR_CONFIG",
			args:    []string{"-config", path},
			environ: []string{"CABLECAR_CONFIG=/nonexistent.yaml"},
			check: func(c *Config) []string {
				return diffs("listen", c.Listen, ":4000")
			},
		},
		{
			name:    "first of duplicate variables wins, as with os.Getenv",
			environ: []string{"CABLECAR_LISTEN=:7000", "CABLECAR_LISTEN=:7001"},
			check: func(c *Config) []string {
				return diffs("listen", c.Listen, ":7000")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := Parse(tt.args, tt.environ, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range tt.check(c) {
				t.Error(d)
			}
		})
	}
}

// diffs compares name, got, want triples.
func diffs(triples ...any) []string {
	var out []string
	for i := 0; i+2 < len(triples); i += 3 {
		if !reflect.DeepEqual(triples[i+1], triples[i+2]) {
			out = append(out, fmt.Sprintf("%s: got %v, want %v", triples[i], triples[i+1], triples[i+2]))
		}
	}
	return out
}

func TestLists(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		environ []string
		origins []string
		secrets []string
	}{
		{name: "env, spaces trimmed, empties dropped",
			environ: []string{"CABLECAR_WEBSOCKET_ALLOWED_ORIGINS= https://a.example , https://b.example:8443,,"},
			origins: []string{"https://a.example", "https://b.example:8443"}},
		{name: "env, empty clears the default",
			environ: []string{"CABLECAR_CALLBACK_SECRET="},
			secrets: nil},
		{name: "env, secrets rotate",
			environ: []string{"CABLECAR_CALLBACK_SECRET=new,old"},
			secrets: []string{"new", "old"}},
		{name: "yaml block list",
			yaml:    "websocket:\n  allowed_origins:\n    - https://a.example\n    - \"*\"\n",
			origins: []string{"https://a.example", "*"}},
		{name: "yaml flow list",
			yaml:    "websocket: {allowed_origins: [https://a.example]}\n",
			origins: []string{"https://a.example"}},
		{name: "yaml scalar is one entry, commas kept",
			yaml:    "callback: {secret: \"s3cr,et\"}\n",
			secrets: []string{"s3cr,et"}},
		{name: "yaml empty string is empty",
			yaml:    "callback: {secret: \"\"}\nwebsocket: {allowed_origins: \"\"}\n",
			secrets: nil},
		{name: "yaml null is empty",
			yaml:    "callback:\n  secret:\nwebsocket:\n  allowed_origins: ~\n",
			secrets: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var args []string
			if tt.yaml != "" {
				args = []string{"-config", writeConfig(t, tt.yaml)}
			}
			c, _, err := Parse(args, tt.environ, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c.WebSocket.AllowedOrigins, tt.origins) {
				t.Errorf("allowed_origins = %q, want %q", c.WebSocket.AllowedOrigins, tt.origins)
			}
			if !reflect.DeepEqual(c.Callback.Secret, tt.secrets) {
				t.Errorf("secret = %q, want %q", c.Callback.Secret, tt.secrets)
			}
		})
	}
}

func TestAliases(t *testing.T) {
	path := writeConfig(t, "callback:\n  timeout: &t 7s\nproxy:\n  connect_timeout: *t\n")
	c, _, err := Parse([]string{"-config", path}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Proxy.ConnectTimeout != 7*time.Second {
		t.Errorf("connect_timeout = %v, want 7s from the alias", c.Proxy.ConnectTimeout)
	}
}

func TestValueForms(t *testing.T) {
	tests := []struct {
		env  string
		want func(*Config) any
		val  any
	}{
		{"CABLECAR_WEBSOCKET_MAX_MESSAGE_SIZE=512KiB", func(c *Config) any { return c.WebSocket.MaxMessageSize }, int64(512 << 10)},
		{"CABLECAR_WEBSOCKET_MAX_MESSAGE_SIZE=1048576", func(c *Config) any { return c.WebSocket.MaxMessageSize }, int64(1 << 20)},
		{"CABLECAR_WEBSOCKET_MAX_MESSAGE_SIZE=100B", func(c *Config) any { return c.WebSocket.MaxMessageSize }, int64(100)},
		{"CABLECAR_WEBSOCKET_MAX_MESSAGE_SIZE=1GiB", func(c *Config) any { return c.WebSocket.MaxMessageSize }, int64(1 << 30)},
		{"CABLECAR_AUTH_JWT_REQUIRED=yes", func(c *Config) any { return c.Auth.JWT.Required }, true},
		{"CABLECAR_AUTH_JWT_REQUIRED=1", func(c *Config) any { return c.Auth.JWT.Required }, true},
		{"CABLECAR_AUTH_JWT_REQUIRED=TRUE", func(c *Config) any { return c.Auth.JWT.Required }, true},
		{"CABLECAR_WEBSOCKET_RATE_LIMIT_PER_SECOND=0", func(c *Config) any { return c.WebSocket.RateLimit.PerSecond }, 0},
		{"CABLECAR_CALLBACK_RETRIES=0", func(c *Config) any { return c.Callback.Retries }, 0},
		{"CABLECAR_AUTH_JWT_LEEWAY=0s", func(c *Config) any { return c.Auth.JWT.Leeway }, time.Duration(0)},
		{"CABLECAR_WEBSOCKET_SEND_QUEUE_BYTES=64KiB", func(c *Config) any { return c.WebSocket.SendQueueBytes }, int64(64 << 10)},
		{"CABLECAR_CALLBACK_CLOSE_RETRY_FOR=2m", func(c *Config) any { return c.Callback.CloseRetryFor }, 2 * time.Minute},
		{"CABLECAR_PROXY_TRUSTED_PROXIES=192.0.2.7, 2001:db8::/32", func(c *Config) any { return c.Proxy.TrustedProxies },
			[]netip.Prefix{netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::/32")}},
		{"CABLECAR_PROXY_TRUSTED_PROXIES=", func(c *Config) any { return c.Proxy.TrustedProxies }, []netip.Prefix(nil)},
		{"CABLECAR_UPSTREAM=unix:///run/puma.sock", func(c *Config) any { return c.Upstream }, Upstream{"unix", "/run/puma.sock"}},
		{"CABLECAR_UPSTREAM=http://[::1]:3001/", func(c *Config) any { return c.Upstream }, Upstream{"tcp", "[::1]:3001"}},
		{"CABLECAR_ADMIN_LISTEN=", func(c *Config) any { return c.Admin.Listen }, ""},
		{"CABLECAR_BROKER_PREFIX=", func(c *Config) any { return c.Broker.Prefix }, ""},
		{"CABLECAR_LOG_FORMAT=Console", func(c *Config) any { return c.Log.Format }, "console"},
		{"CABLECAR_ACTIONCABLE_SESSION_TTL=0s", func(c *Config) any { return c.ActionCable.SessionTTL }, time.Duration(0)},
		{"CABLECAR_ACTIONCABLE_PUBLIC_STREAMS=true", func(c *Config) any { return c.ActionCable.PublicStreams }, true},
		{"CABLECAR_ACTIONCABLE_TURBO_STREAMS_SECRET=a,b", func(c *Config) any { return c.ActionCable.TurboStreamsSecret }, "a,b"},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			environ := []string{tt.env}
			if strings.HasPrefix(tt.env, "CABLECAR_AUTH_JWT_REQUIRED") {
				environ = append(environ, "CABLECAR_AUTH_JWT_HMAC_SECRET=k")
			}
			c, _, err := Parse(nil, environ, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.want(c); !reflect.DeepEqual(got, tt.val) {
				t.Errorf("got %v, want %v", got, tt.val)
			}
		})
	}
}

// Every bad input is one line naming the key, the value and its source.
func TestErrors(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string // written to f.yaml and passed with -config when set
		environ []string
		args    []string
		want    string // the whole message; FILE stands for the file's path
	}{
		{name: "bad duration in file",
			yaml: "proxy:\n  connect_timeout: 5x\n",
			want: `proxy.connect_timeout: "5x" is not a duration (examples: 250ms, 5s, 1m) [FILE line 2]`},
		{name: "duration without unit",
			environ: []string{"CABLECAR_SHUTDOWN_TIMEOUT=30"},
			want:    `shutdown_timeout: "30" has no unit (examples: 250ms, 5s, 1m) [CABLECAR_SHUTDOWN_TIMEOUT]`},
		{name: "zero duration",
			yaml: "proxy: {connect_timeout: 0s}\n",
			want: `proxy.connect_timeout: "0s" must be greater than zero (examples: 250ms, 5s, 1m) [FILE line 1]`},
		{name: "negative duration",
			environ: []string{"CABLECAR_CALLBACK_TIMEOUT=-1s"},
			want:    `callback.timeout: "-1s" must be greater than zero (examples: 250ms, 5s, 1m) [CABLECAR_CALLBACK_TIMEOUT]`},
		{name: "bad size",
			environ: []string{"CABLECAR_WEBSOCKET_MAX_MESSAGE_SIZE=1MB"},
			want:    `websocket.max_message_size: "1MB" is not a size (use bytes or a KiB, MiB or GiB suffix, e.g. 1048576, 512KiB, 1MiB) [CABLECAR_WEBSOCKET_MAX_MESSAGE_SIZE]`},
		{name: "size out of range",
			yaml: "websocket:\n  max_message_size: 2GiB\n",
			want: `websocket.max_message_size: "2GiB" is out of range (1 to 1GiB) [FILE line 2]`},
		{name: "forwarding a Cablecar header",
			environ: []string{"CABLECAR_CALLBACK_FORWARD_HEADERS=Cookie,Cablecar_Claims"},
			want:    `callback.forward_headers: "Cablecar_Claims" is a Cablecar header: Cablecar sets those itself and never forwards them [CABLECAR_CALLBACK_FORWARD_HEADERS]`},
		{name: "negative leeway",
			environ: []string{"CABLECAR_AUTH_JWT_LEEWAY=-1s"},
			want:    `auth.jwt.leeway: "-1s" must not be negative (examples: 0s, 250ms, 5s) [CABLECAR_AUTH_JWT_LEEWAY]`},
		{name: "negative session ttl",
			yaml: "actioncable: {session_ttl: -2m}\n",
			want: `actioncable.session_ttl: "-2m" must not be negative (examples: 0s, 250ms, 5s) [FILE line 1]`},
		{name: "zero actioncable ping",
			environ: []string{"CABLECAR_ACTIONCABLE_PING_INTERVAL=0s"},
			want:    `actioncable.ping_interval: "0s" must be greater than zero (examples: 250ms, 5s, 1m) [CABLECAR_ACTIONCABLE_PING_INTERVAL]`},
		{name: "zero timeout",
			environ: []string{"CABLECAR_PROXY_CLIENT_BODY_TIMEOUT=0s"},
			want:    `proxy.client_body_timeout: "0s" must be greater than zero (examples: 250ms, 5s, 1m) [CABLECAR_PROXY_CLIENT_BODY_TIMEOUT]`},
		{name: "bad int",
			environ: []string{"CABLECAR_PROXY_MAX_CONNS=lots"},
			want:    `proxy.max_conns: "lots" is not a whole number [CABLECAR_PROXY_MAX_CONNS]`},
		{name: "int out of range",
			yaml: "websocket:\n  send_queue: 0\n",
			want: `websocket.send_queue: "0" is out of range (1 to 1000000) [FILE line 2]`},
		{name: "negative retries",
			environ: []string{"CABLECAR_CALLBACK_RETRIES=-1"},
			want:    `callback.retries: "-1" is out of range (0 to 100) [CABLECAR_CALLBACK_RETRIES]`},
		{name: "bad bool",
			environ: []string{"CABLECAR_AUTH_JWT_REQUIRED=maybe"},
			want:    `auth.jwt.required: "maybe" is not a boolean (use true or false) [CABLECAR_AUTH_JWT_REQUIRED]`},
		{name: "listen without colon",
			environ: []string{"CABLECAR_LISTEN=3000"},
			want:    `listen: "3000" has no colon (did you mean ":3000"?) [CABLECAR_LISTEN]`},
		{name: "listen bad port",
			args: []string{"-listen", ":99999"},
			want: `listen: ":99999" has a bad port "99999" (a number, 0 to 65535) [-listen flag]`},
		{name: "listen empty",
			yaml: "listen: \"\"\n",
			want: `listen: "" is empty (expected host:port, e.g. ":3000") [FILE line 1]`},
		{name: "admin listen not host:port",
			yaml: "admin:\n  listen: localhost\n",
			want: `admin.listen: "localhost" is not host:port (e.g. ":3000", "127.0.0.1:3000", "[::1]:3000") [FILE line 2]`},
		{name: "unknown upstream scheme",
			environ: []string{"CABLECAR_UPSTREAM=https://app:3001"},
			want:    `upstream: "https://app:3001" has unknown scheme "https" (use http://host:port or unix:/path/to/sock) [CABLECAR_UPSTREAM]`},
		{name: "upstream without scheme",
			args: []string{"-upstream", "127.0.0.1:3001"},
			want: `upstream: "127.0.0.1:3001" has no scheme (did you mean "http://127.0.0.1:3001"?) [-upstream flag]`},
		{name: "upstream without port",
			yaml: "upstream: http://app\n",
			want: `upstream: "http://app" has no port (e.g. http://app:3001) [FILE line 1]`},
		{name: "upstream with path",
			yaml: "upstream: http://app:3001/api\n",
			want: `upstream: "http://app:3001/api" has a path "/api": requests keep their own path, so give only http://host:port [FILE line 1]`},
		{name: "unix upstream naming a host",
			yaml: "upstream: unix://run/puma.sock\n",
			want: `upstream: "unix://run/puma.sock" names a host; use unix:/abs/path.sock or unix:///abs/path.sock [FILE line 1]`},
		{name: "unknown top-level key",
			yaml: "listen: \":3000\"\nlistne: \":3000\"\n",
			want: `listne: unknown key (did you mean listen?) [FILE line 2]`},
		{name: "unknown nested key with suggestion",
			yaml: "proxy:\n  connect_timeout: 5s\n  conect_timeout: 5s\n",
			want: `proxy.conect_timeout: unknown key (did you mean proxy.connect_timeout?) [FILE line 3]`},
		{name: "unknown key three deep",
			yaml: "websocket:\n  rate_limit:\n    per_secnd: 5\n",
			want: `websocket.rate_limit.per_secnd: unknown key (did you mean websocket.rate_limit.per_second?) [FILE line 3]`},
		{name: "key in the wrong section",
			yaml: "connect_timeout: 5s\n",
			want: `connect_timeout: unknown key (did you mean proxy.connect_timeout?) [FILE line 1]`},
		{name: "unknown key, nothing close",
			yaml: "proxy:\n  frobnicate: true\n",
			want: `proxy.frobnicate: unknown key [FILE line 2]`},
		{name: "dotted key",
			yaml: "proxy.connect_timeout: 5s\n",
			want: `proxy.connect_timeout: unknown key (write sections nested, e.g. proxy: {connect_timeout: 5s}) [FILE line 1]`},
		{name: "mapping where a value belongs",
			yaml: "proxy:\n  connect_timeout:\n    seconds: 5\n",
			want: `proxy.connect_timeout: must be a single value, not a mapping [FILE line 3]`},
		{name: "list where a value belongs",
			yaml: "listen: [\":3000\"]\n",
			want: `listen: must be a single value, not a list [FILE line 1]`},
		{name: "value where a section belongs",
			yaml: "proxy: 5s\n",
			want: `proxy: must be a mapping of proxy.* keys, not a single value [FILE line 1]`},
		{name: "mapping where a list belongs",
			yaml: "callback:\n  forward_headers: {Cookie: true}\n",
			want: `callback.forward_headers: must be a list, not a mapping [FILE line 2]`},
		{name: "null value",
			yaml: "proxy:\n  connect_timeout:\n",
			want: `proxy.connect_timeout: has no value (leave it out to keep the default, 5s) [FILE line 2]`},
		{name: "empty env for a number",
			environ: []string{"CABLECAR_PROXY_MAX_CONNS="},
			want:    `proxy.max_conns: has no value (leave it out to keep the default, 1024) [CABLECAR_PROXY_MAX_CONNS]`},
		{name: "duplicate key",
			yaml: "log:\n  level: info\n  level: debug\n",
			want: `log.level: is set twice (first at line 2) [FILE line 3]`},
		{name: "bad enum",
			args: []string{"-log-level", "verbose"},
			want: `log.level: "verbose" is not one of trace, debug, info, warn, error [-log-level flag]`},
		{name: "pong not above ping",
			yaml:    "websocket:\n  ping_interval: 10s\n",
			environ: nil,
			want:    `websocket.pong_timeout: "10s" must be longer than websocket.ping_interval (10s) [default; websocket.ping_interval from FILE line 2]`},
		{name: "pong below ping from env",
			environ: []string{"CABLECAR_WEBSOCKET_PONG_TIMEOUT=4s"},
			want:    `websocket.pong_timeout: "4s" must be longer than websocket.ping_interval (5s) [CABLECAR_WEBSOCKET_PONG_TIMEOUT; websocket.ping_interval from default]`},
		{name: "admin on the client port",
			environ: []string{"CABLECAR_ADMIN_LISTEN=0.0.0.0:3000"},
			want:    `admin.listen: "0.0.0.0:3000" must not be the same address as listen (:3000); give the admin listener its own port, or "" to disable it [CABLECAR_ADMIN_LISTEN; listen from default]`},
		{name: "admin on every interface without a key",
			environ: []string{"CABLECAR_ADMIN_LISTEN=0.0.0.0:9394"},
			want:    `admin.listen: "0.0.0.0:9394" is not a loopback address, so admin.api_key must be set: anyone who can reach it could publish, send and close (or listen on 127.0.0.1) [CABLECAR_ADMIN_LISTEN; admin.api_key from default]`},
		{name: "admin on a name without a key",
			yaml: "admin:\n  listen: cablecar.internal:9394\n  api_key: \"\"\n",
			want: `admin.listen: "cablecar.internal:9394" is not a loopback address, so admin.api_key must be set: anyone who can reach it could publish, send and close (or listen on 127.0.0.1) [FILE line 2; admin.api_key from FILE line 3]`},
		{name: "jwt required without keys",
			environ: []string{"CABLECAR_AUTH_JWT_REQUIRED=true"},
			want:    `auth.jwt.required: "true" but neither auth.jwt.hmac_secret nor auth.jwt.jwks_url is set, so no token could pass [CABLECAR_AUTH_JWT_REQUIRED]`},
		{name: "bad origin",
			yaml: "websocket:\n  allowed_origins: [https://example.com/app]\n",
			want: `websocket.allowed_origins: "https://example.com/app" is not an origin: it has more than scheme://host[:port] (did you mean "https://example.com"?) [FILE line 2]`},
		{name: "bad trusted proxy",
			environ: []string{"CABLECAR_PROXY_TRUSTED_PROXIES=10.1.2.3/8"},
			want:    `proxy.trusted_proxies: "10.1.2.3/8" has bits set past the prefix length (did you mean 10.0.0.0/8, or 10.1.2.3?) [CABLECAR_PROXY_TRUSTED_PROXIES]`},
		{name: "empty list entry in yaml",
			yaml: "callback:\n  forward_headers: [Cookie, ~]\n",
			want: `callback.forward_headers: "" is an empty list entry [FILE line 2]`},
		{name: "bad header name",
			environ: []string{"CABLECAR_CALLBACK_FORWARD_HEADERS=Cookie,X Bad"},
			want:    `callback.forward_headers: "X Bad" is not a header name [CABLECAR_CALLBACK_FORWARD_HEADERS]`},
		{name: "bad broker scheme",
			environ: []string{"CABLECAR_BROKER_URL=http://redis:6379"},
			want:    `broker.url: "http://redis:6379" has unknown scheme "http" (use redis://, rediss://, redis+sentinel://, redis+cluster:// or rediss+cluster://, or "" for in-memory) [CABLECAR_BROKER_URL]`},
		{name: "sentinel without master name",
			environ: []string{"CABLECAR_BROKER_URL=redis+sentinel://sentinel:26379"},
			want:    `broker.url: "redis+sentinel://sentinel:26379" cannot be used: redis+sentinel:// needs the master's name as ?master_name= [CABLECAR_BROKER_URL]`},
		{name: "unknown broker url parameter",
			environ: []string{"CABLECAR_BROKER_URL=redis://redis:6379?pool=3"},
			want:    `broker.url: "redis://redis:6379?pool=3" cannot be used: redis: unexpected option: pool [CABLECAR_BROKER_URL]`},
		{name: "health path without slash",
			yaml: "proxy: {health_path: up}\n",
			want: `proxy.health_path: "up" must start with "/" (did you mean "/up"?) [FILE line 1]`},
		{name: "bad jwks url",
			environ: []string{"CABLECAR_AUTH_JWT_JWKS_URL=keys.json"},
			want:    `auth.jwt.jwks_url: "keys.json" is not an http:// or https:// URL [CABLECAR_AUTH_JWT_JWKS_URL]`},
		{name: "empty query param",
			environ: []string{"CABLECAR_AUTH_JWT_QUERY_PARAM="},
			want:    `auth.jwt.query_param: "" must not be empty [CABLECAR_AUTH_JWT_QUERY_PARAM]`},
		{name: "yaml syntax",
			yaml: "proxy:\n  connect_timeout: 5s\n bad\n",
			want: `config file: yaml: line 2: did not find expected key [FILE]`},
		{name: "top level not a mapping",
			yaml: "- listen\n",
			want: `config file: must be a mapping of keys (e.g. listen: ":3000"), not a list [FILE line 1]`},
		{name: "two documents",
			yaml: "listen: \":3000\"\n---\nlisten: \":4000\"\n",
			want: `config file: holds more than one YAML document (remove the extra ---) [FILE]`},
		{name: "missing file",
			args: []string{"-config", "/nonexistent/f.yaml"},
			want: `config file: open /nonexistent/f.yaml: no such file or directory [-config flag]`},
		{name: "missing file from env",
			environ: []string{"CABLECAR_CONFIG=/nonexistent/f.yaml"},
			want:    `config file: open /nonexistent/f.yaml: no such file or directory [CABLECAR_CONFIG]`},
		{name: "file error reported even when env overrides it",
			yaml:    "listen: nope\n",
			environ: []string{"CABLECAR_LISTEN=:3000"},
			want:    `listen: "nope" is not host:port (e.g. ":3000", "127.0.0.1:3000", "[::1]:3000") [FILE line 1]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args, file := tt.args, ""
			if tt.yaml != "" {
				file = writeConfig(t, tt.yaml)
				args = append([]string{"-config", file}, args...)
			}
			_, _, err := Parse(args, tt.environ, nil)
			if err == nil {
				t.Fatalf("Parse succeeded, want %s", tt.want)
			}
			want := strings.ReplaceAll(tt.want, "FILE", file)
			if err.Error() != want {
				t.Errorf("error:\n got %s\nwant %s", err, want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

// Config errors are *Error, so callers can tell them from flag misuse.
func TestErrorType(t *testing.T) {
	_, _, err := Parse(nil, []string{"CABLECAR_LISTEN=x"}, nil)
	var ce *Error
	if !errors.As(err, &ce) || ce.Key != "listen" || ce.Source != "CABLECAR_LISTEN" {
		t.Fatalf("err = %#v, want *Error for listen from CABLECAR_LISTEN", err)
	}
}

func TestFlagErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-nope"}, "flag provided but not defined: -nope (run cablecar -h for usage)"},
		{[]string{"-listen"}, "flag needs an argument: -listen (run cablecar -h for usage)"},
		{[]string{"serve"}, `unexpected argument "serve": not a verb, and the sidecar takes only flags (run cablecar help)`},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		_, _, err := Parse(tt.args, nil, &out)
		if err == nil || err.Error() != tt.want {
			t.Errorf("Parse(%q) error = %v, want %s", tt.args, err, tt.want)
		}
		if out.Len() != 0 {
			t.Errorf("Parse(%q) printed %q; errors are for the caller to print", tt.args, out.String())
		}
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"-h", "-help", "--help"} {
		var out bytes.Buffer
		_, _, err := Parse([]string{arg}, nil, &out)
		if !errors.Is(err, flag.ErrHelp) {
			t.Errorf("Parse(%s) error = %v, want flag.ErrHelp", arg, err)
		}
		for _, want := range []string{"-config", "-check", "-version", "-listen", "-upstream", "-log-level", "CABLECAR_LOG_LEVEL", "CABLECAR_PROXY_CONNECT_TIMEOUT"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("usage lacks %s:\n%s", want, out.String())
			}
		}
	}
}

// -version must work however broken the config is.
func TestVersionSkipsConfig(t *testing.T) {
	c, fl, err := Parse([]string{"-version", "-config", "/nonexistent.yaml"}, []string{"CABLECAR_LISTEN=bad"}, nil)
	if err != nil || !fl.Version || c == nil {
		t.Fatalf("Parse(-version) = %v, %+v, %v; want defaults, Version, nil", c, fl, err)
	}
}

func TestCheckFlag(t *testing.T) {
	path := writeConfig(t, "")
	_, fl, err := Parse([]string{"-check", "-config", path}, nil, nil)
	if err != nil || !fl.Check || fl.ConfigPath != path {
		t.Fatalf("Parse(-check) = %+v, %v", fl, err)
	}
}

func TestEmptyFile(t *testing.T) {
	for _, body := range []string{"", "# only a comment\n", "~\n", "---\n"} {
		c, _, err := Parse([]string{"-config", writeConfig(t, body)}, nil, nil)
		if err != nil {
			t.Errorf("%q: %v", body, err)
			continue
		}
		if !reflect.DeepEqual(c, Default()) {
			t.Errorf("%q: not the defaults", body)
		}
	}
}

// A section whose keys are all commented out is empty, not an error.
func TestNullSection(t *testing.T) {
	path := writeConfig(t, "auth:\n  jwt:\n    # required: true\nbroker:\n")
	if _, _, err := Parse([]string{"-config", path}, nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownEnvWarnings(t *testing.T) {
	environ := []string{
		"CABLECAR_PROXY_CONECT_TIMEOUT=1s", // typo
		"CABLECAR_CONNECT_TIMEOUT=1s",      // right key, section left out
		"CABLECAR_SECRET=x",                // the app's own, or a secret
		"CABLECAR_RAILS_THING=1",           // nothing close
		"CABLECAR_CONFIG=",                 // known, not a key
		"CABLECAR_LISTEN=:3000",            // known
		"CABLECAR_ADMIN_URL=http://x:9394", // the gem's own (SPEC §7)
		"PATH=/usr/bin",                    // not ours
		"NOEQUALS",
	}
	_, fl, err := Parse(nil, environ, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"CABLECAR_CONNECT_TIMEOUT: unknown variable, ignored (did you mean CABLECAR_PROXY_CONNECT_TIMEOUT?)",
		"CABLECAR_PROXY_CONECT_TIMEOUT: unknown variable, ignored (did you mean CABLECAR_PROXY_CONNECT_TIMEOUT?)",
		"CABLECAR_RAILS_THING: unknown variable, ignored",
		"CABLECAR_SECRET: unknown variable, ignored (did you mean CABLECAR_ACTIONCABLE_TURBO_STREAMS_SECRET or CABLECAR_AUTH_JWT_HMAC_SECRET or CABLECAR_CALLBACK_SECRET?)",
	}
	if !reflect.DeepEqual(fl.Warnings, want) {
		t.Errorf("warnings:\n got %q\nwant %q", fl.Warnings, want)
	}
}

// Every key has its variable, named by the rule users are told.
func TestEveryKeyHasEnv(t *testing.T) {
	for _, f := range theSchema().fields {
		want := "CABLECAR_" + strings.ToUpper(strings.ReplaceAll(f.key, ".", "_"))
		if f.env != want {
			t.Errorf("%s: env %s, want %s", f.key, f.env, want)
		}
		// Setting the variable to the default must be accepted and
		// change nothing.
		c, _, err := Parse(nil, []string{f.env + "=" + strings.Join(f.format(f.in(Default())), ",")}, nil)
		if err != nil {
			t.Errorf("%s=default: %v", f.env, err)
			continue
		}
		if !reflect.DeepEqual(c, Default()) {
			t.Errorf("%s=default changed the config", f.env)
		}
	}
}

// secretEnv sets every secret, and a broker password, to values that
// must never be printed.
var secretEnv = []string{
	"CABLECAR_ADMIN_API_KEY=adminsecret1",
	"CABLECAR_CALLBACK_SECRET=cbsecret1,cbsecret2",
	"CABLECAR_AUTH_JWT_HMAC_SECRET=jwtsecret1",
	"CABLECAR_BROKER_URL=redis://user:brokerpass1@redis:6379/0",
	"CABLECAR_ACTIONCABLE_TURBO_STREAMS_SECRET=turbosecret1",
}

var secretValues = []string{"adminsecret1", "cbsecret1", "cbsecret2", "jwtsecret1", "brokerpass1", "turbosecret1"}

func TestSecretsNeverShown(t *testing.T) {
	c, _, err := Parse(nil, secretEnv, nil)
	if err != nil {
		t.Fatal(err)
	}
	eff := c.Effective()
	for _, s := range secretValues {
		if strings.Contains(eff, s) {
			t.Errorf("Effective() shows %s:\n%s", s, eff)
		}
	}
	for _, want := range []string{
		"api_key: '********'",
		"secret: ['********', '********']",
		"hmac_secret: ['********']",
		"url: redis://user:********@redis:6379/0",
		"turbo_streams_secret: '********'",
	} {
		if !strings.Contains(eff, want) {
			t.Errorf("Effective() lacks %q:\n%s", want, eff)
		}
	}

	// Errors about secrets must not quote them either, however they fail.
	bad := [][]string{
		{"CABLECAR_ADMIN_API_KEY=adminsecret1", "CABLECAR_ADMIN_LISTEN=:3000"},
		{"CABLECAR_BROKER_URL=ftp://u:brokerpass1@h"},
		{"CABLECAR_BROKER_URL=redis://u:brokerpass1@"},
		{"CABLECAR_BROKER_URL=%zz://u:brokerpass1@h/x@y"},
	}
	for _, env := range bad {
		_, _, err := Parse(nil, env, nil)
		if err == nil {
			t.Errorf("%q: no error", env)
			continue
		}
		t.Log(err)
		for _, s := range secretValues {
			if strings.Contains(err.Error(), s) {
				t.Errorf("error shows %s: %v", s, err)
			}
		}
	}
	path := writeConfig(t, "callback:\n  secret: [cbsecret1, ~]\nauth: {jwt: {hmac_secret: {k: jwtsecret1}}}\n")
	_, _, err = Parse([]string{"-config", path}, nil, nil)
	if err == nil || strings.Contains(err.Error(), "cbsecret1") {
		t.Errorf("error = %v; want one that hides the secret", err)
	}
	// A misspelt secret key is reported without its value.
	path = writeConfig(t, "admin:\n  apikey: adminsecret1\n")
	_, _, err = Parse([]string{"-config", path}, nil, nil)
	if err == nil || strings.Contains(err.Error(), "adminsecret1") || !strings.Contains(err.Error(), "admin.api_key") {
		t.Errorf("error = %v; want a suggestion without the value", err)
	}
}

// What -check prints must load back to the same config, secrets aside.
func TestEffectiveRoundTrip(t *testing.T) {
	environ := append([]string{
		"CABLECAR_LISTEN=[::1]:4000",
		"CABLECAR_UPSTREAM=unix:/tmp/puma.sock",
		"CABLECAR_SHUTDOWN_TIMEOUT=1h30m",
		"CABLECAR_PROXY_RESPONSE_TIMEOUT=1500ms",
		"CABLECAR_PROXY_TRUSTED_PROXIES=192.0.2.7,::1,fd00::/8",
		"CABLECAR_PROXY_HEALTH_PATH=/up?full=1",
		"CABLECAR_BROKER_PREFIX=yes",
		"CABLECAR_WEBSOCKET_MAX_MESSAGE_SIZE=1000",
		"CABLECAR_WEBSOCKET_ALLOWED_ORIGINS=*,https://example.com:8443",
		"CABLECAR_CALLBACK_FORWARD_HEADERS=",
		"CABLECAR_AUTH_JWT_REQUIRED=true",
		"CABLECAR_AUTH_JWT_ISSUER=123",
		"CABLECAR_AUTH_JWT_AUDIENCE=null",
		"CABLECAR_ACTIONCABLE_PING_INTERVAL=1500ms",
		"CABLECAR_ACTIONCABLE_PUBLIC_STREAMS=true",
		"CABLECAR_ACTIONCABLE_SESSION_TTL=0s",
		"CABLECAR_LOG_FORMAT=json",
	}, secretEnv...)
	tests := []struct {
		name    string
		environ []string
	}{
		{"defaults", nil},
		{"everything changed", environ},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := Parse(nil, tt.environ, nil)
			if err != nil {
				t.Fatal(err)
			}
			eff := c.Effective()
			back, _, err := Parse([]string{"-config", writeConfig(t, eff)}, nil, nil)
			if err != nil {
				t.Fatalf("loading Effective() back: %v\n%s", err, eff)
			}
			want := *c
			maskSecrets(&want)
			if !reflect.DeepEqual(back, &want) {
				t.Errorf("round trip changed the config:\n got %+v\nwant %+v\n%s", back, &want, eff)
			}
		})
	}
}

// maskSecrets is what a config looks like after Effective and reload.
func maskSecrets(c *Config) {
	for _, s := range []*string{&c.Admin.APIKey, &c.ActionCable.TurboStreamsSecret} {
		if *s != "" {
			*s = mask
		}
	}
	for _, list := range []*[]string{&c.Callback.Secret, &c.Auth.JWT.HMACSecret} {
		for i := range *list {
			(*list)[i] = mask
		}
	}
	c.Broker.URL = maskURL(c.Broker.URL)
	c.Auth.JWT.JWKSURL = maskURL(c.Auth.JWT.JWKSURL)
}

// Only a loopback admin listener may go without an api_key.
func TestAdminListenNeedsKeyOffLoopback(t *testing.T) {
	for _, addr := range []string{"", "127.0.0.1:9394", "127.9.9.9:1", "[::1]:9394", "localhost:9394", "LocalHost:0"} {
		if _, _, err := Parse(nil, []string{"CABLECAR_ADMIN_LISTEN=" + addr}, nil); err != nil {
			t.Errorf("admin.listen %q without a key: %v", addr, err)
		}
	}
	for _, addr := range []string{":9394", "0.0.0.0:9394", "[::]:9394", "10.0.0.5:9394", "[fe80::1]:9394", "admin.example:9394", "localhost.example:1"} {
		if _, _, err := Parse(nil, []string{"CABLECAR_ADMIN_LISTEN=" + addr}, nil); err == nil || !strings.Contains(err.Error(), "admin.api_key must be set") {
			t.Errorf("admin.listen %q without a key: %v, want the api_key error", addr, err)
		}
		if _, _, err := Parse(nil, []string{"CABLECAR_ADMIN_LISTEN=" + addr, "CABLECAR_ADMIN_API_KEY=k"}, nil); err != nil {
			t.Errorf("admin.listen %q with a key: %v", addr, err)
		}
	}
}
