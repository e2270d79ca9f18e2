package sidecar

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/config"
)

// Settings that do nothing with the rest of the config are warned about
// once at start-up; the defaults warn about nothing.
func TestWarnInactive(t *testing.T) {
	tests := []struct {
		name   string
		change func(*config.Config)
		want   string // a section named in the warning; "" = no warning
	}{
		{name: "defaults", change: func(*config.Config) {}},
		{name: "prefix without redis", change: func(c *config.Config) { c.Broker.Prefix = "other:" }, want: "broker"},
		{name: "lease without redis", change: func(c *config.Config) { c.Broker.LeaseTTL = time.Minute }, want: "broker"},
		{name: "prefix with redis", change: func(c *config.Config) {
			c.Broker.URL = "redis://127.0.0.1:6379"
			c.Broker.Prefix = "other:"
		}},
		{name: "jwt without keys", change: func(c *config.Config) { c.Auth.JWT.Issuer = "https://issuer.example" }, want: "auth.jwt"},
		{name: "jwt with a secret", change: func(c *config.Config) {
			c.Auth.JWT.HMACSecret = []string{"s"}
			c.Auth.JWT.Issuer = "https://issuer.example"
		}},
		{name: "jwt with a key set", change: func(c *config.Config) { c.Auth.JWT.JWKSURL = "https://issuer.example/jwks" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			tt.change(cfg)
			var out bytes.Buffer
			warnInactive(cfg, zerolog.New(&out))
			got := out.String()
			switch {
			case tt.want == "" && got != "":
				t.Errorf("warned: %s", got)
			case tt.want != "" && !strings.Contains(got, `"section":"`+tt.want+`"`):
				t.Errorf("log %q, want a warning about %s", got, tt.want)
			}
		})
	}
}

// Unsigned callbacks are warned about; signed ones are not.
func TestWarnUnsigned(t *testing.T) {
	cfg := config.Default()
	var out bytes.Buffer
	warnUnsigned(cfg, zerolog.New(&out))
	if !strings.Contains(out.String(), "callback.secret") {
		t.Errorf("no warning without callback.secret: %q", out.String())
	}
	out.Reset()
	cfg.Callback.Secret = []string{"s"}
	warnUnsigned(cfg, zerolog.New(&out))
	if out.Len() != 0 {
		t.Errorf("warned with a secret: %q", out.String())
	}
}

// Shutdown keeps a fifth of its time, at most 2 s, to hand close events
// over to another node; the rest is the close events'.
func TestHandOverTime(t *testing.T) {
	for _, tt := range []struct{ timeout, want time.Duration }{
		{25 * time.Second, 2 * time.Second},
		{5 * time.Second, time.Second},
		{time.Second, 200 * time.Millisecond},
	} {
		if got := handOverTime(tt.timeout); got != tt.want {
			t.Errorf("handOverTime(%v) = %v, want %v", tt.timeout, got, tt.want)
		}
	}
}
