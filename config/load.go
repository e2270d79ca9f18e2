package config

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// loader applies the layers to one Config and remembers where each value
// came from, so that a check across keys can name every source.
type loader struct {
	cfg    *Config
	origin map[string]string // dotted key → source of its current value
}

func newLoader() *loader {
	return &loader{cfg: Default(), origin: map[string]string{}}
}

func (l *loader) sourceOf(key string) string {
	if s, ok := l.origin[key]; ok {
		return s
	}
	return "default"
}

// setScalar validates and sets one value. Each value is validated as it
// is set, so a bad value is reported with the source that gave it even
// when a later layer would override it: a broken file is worth knowing
// about.
func (l *loader) setScalar(f *field, raw, source string) error {
	if err := f.setScalar(f.in(l.cfg), raw); err != nil {
		return f.valueError(raw, source, err)
	}
	l.origin[f.key] = source
	return nil
}

func (l *loader) setList(f *field, items []string, source string) error {
	if bad, err := f.setList(f.in(l.cfg), items); err != nil {
		return f.valueError(bad, source, err)
	}
	l.origin[f.key] = source
	return nil
}

// crossCheck validates what no single key can: the relations between
// keys. The message names the sources of both.
func (l *loader) crossCheck() error {
	c := l.cfg
	if ws := c.WebSocket; ws.PongTimeout <= ws.PingInterval {
		return l.pairError("websocket.pong_timeout", "websocket.ping_interval",
			"must be longer than websocket.ping_interval (%s)")
	}
	if sameListener(c.Admin.Listen, c.Listen) {
		return l.pairError("admin.listen", "listen",
			"must not be the same address as listen (%s); give the admin listener its own port, or \"\" to disable it")
	}
	if c.Admin.APIKey == "" && !loopbackListener(c.Admin.Listen) {
		return &Error{Key: "admin.listen", Source: l.sourceOf("admin.listen") + "; admin.api_key from " + l.sourceOf("admin.api_key"),
			Msg: lookupField("admin.listen").show(c.Admin.Listen) + " is not a loopback address, so admin.api_key must be set: " +
				"anyone who can reach it could publish, send and close (or listen on 127.0.0.1)"}
	}
	if j := c.Auth.JWT; j.Required && len(j.HMACSecret) == 0 && j.JWKSURL == "" {
		return &Error{Key: "auth.jwt.required", Source: l.sourceOf("auth.jwt.required"),
			Msg: `"true" but neither auth.jwt.hmac_secret nor auth.jwt.jwks_url is set, so no token could pass`}
	}
	return nil
}

// pairError reports key a, whose relation to key b is wrong; msg has one
// %s for b's value. Neither key may be a secret.
func (l *loader) pairError(a, b, msg string) error {
	fa, fb := lookupField(a), lookupField(b)
	value := func(f *field) string { return strings.Join(f.format(f.in(l.cfg)), ",") }
	return &Error{
		Key:    a,
		Msg:    fa.show(value(fa)) + " " + fmt.Sprintf(msg, value(fb)),
		Source: l.sourceOf(a) + "; " + b + " from " + l.sourceOf(b),
	}
}

// loopbackListener says whether a listen address takes connections from
// this host only: "" (no listener), localhost or a loopback IP. An empty
// host is every interface; any other name may resolve to anything.
func loopbackListener(addr string) bool {
	if addr == "" {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// sameListener says whether two listen addresses would collide: the same
// non-zero port on the same host, or on every interface.
func sameListener(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	if errA != nil || errB != nil || pa != pb || pa == "0" {
		return false
	}
	wildcard := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return ha == hb || wildcard(ha) || wildcard(hb)
}
