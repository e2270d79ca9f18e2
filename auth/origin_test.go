package auth

import (
	"strings"
	"testing"
)

func TestNewOriginPolicyRefuses(t *testing.T) {
	tests := []struct {
		entry string
		want  string // in the error, besides the entry itself
	}{
		{"example.com", "no scheme"},
		{"//example.com", "no scheme"},
		{"1http://example.com", "no scheme"},
		{"https://", "no host"},
		{"https://:443", "no host"},
		{"https://example.com/", `did you mean "https://example.com"`},
		{"https://example.com/app", "more than scheme://host[:port]"},
		{"https://example.com?x=1", "more than"},
		{"https://example.com#top", "more than"},
		{"https://user@example.com", "user info"},
		{"https://*.example.com", "wildcard"},
		{"**", "no scheme"},
		{"https://example.com:", "invalid port"},
		{"https://example.com:0", "invalid port"},
		{"https://example.com:65536", "invalid port"},
		{"https://example.com:80a", "invalid port"},
		{"https://exa mple.com", "in its host"},
		{"https://exämple.com", "in its host"},
		{"https://[::1", "unclosed"},
		{"https://[::1]x", "other than a port"},
		{"https://[zz::1]", "invalid IPv6"},
		{"https://::1", "in its host"},
		{"null", "cannot be listed"},
		{"", "empty"},
	}
	for _, tt := range tests {
		_, err := NewOriginPolicy([]string{"https://fine.example", tt.entry})
		if err == nil {
			t.Errorf("NewOriginPolicy(%q) succeeded", tt.entry)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, tt.want) || !strings.Contains(msg, `"`+tt.entry+`"`) {
			t.Errorf("NewOriginPolicy(%q): %q, want it to name the entry and say %q", tt.entry, msg, tt.want)
		}
	}
}

func TestOriginPolicyAllow(t *testing.T) {
	tests := []struct {
		name    string
		allowed []string
		origin  string
		host    string
		tls     bool
		want    bool
	}{
		// Not a browser: nothing to protect a victim's cookies from.
		{"no origin, own host only", nil, "", "a.com", false, true},
		{"no origin, list", []string{"https://b.com"}, "", "a.com", false, true},

		{"any", []string{"*"}, "https://evil.example", "a.com", true, true},
		{"any with others", []string{"https://b.com", "*"}, "http://c.com", "a.com", false, true},
		{"any allows null", []string{"*"}, "null", "a.com", false, true},
		{"any allows garbage", []string{"*"}, "not an origin", "a.com", false, true},

		{"own host", nil, "https://a.com", "a.com", true, true},
		{"own host behind a TLS proxy", nil, "https://a.com", "a.com", false, true},
		{"own host, plain http", nil, "http://a.com", "a.com", false, true},
		{"own host with port", nil, "http://localhost:3000", "localhost:3000", false, true},
		{"own host, explicit default port in Host", nil, "https://a.com", "a.com:443", false, true},
		{"own host, explicit default port in Origin", nil, "https://a.com:443", "a.com", false, true},
		{"own host, case", nil, "HTTPS://A.Com", "a.COM", false, true},
		{"own host, IPv6", nil, "http://[::1]:3000", "[::1]:3000", false, true},
		{"own host, port leading zero", nil, "http://a.com:03000", "a.com:3000", false, true},
		{"other host", nil, "https://evil.example", "a.com", false, false},
		{"suffix host", nil, "https://evila.com", "a.com", false, false},
		{"sub-domain", nil, "https://x.a.com", "a.com", false, false},
		{"other port", nil, "http://localhost:3001", "localhost:3000", false, false},
		{"https origin, Host on port 80", nil, "https://a.com", "a.com:80", false, false},
		{"plain http page to a TLS request", nil, "http://a.com", "a.com", true, false},
		{"own host, other scheme", nil, "chrome-extension://a.com", "a.com", false, false},
		{"null to own host", nil, "null", "a.com", false, false},
		{"no Host", nil, "https://a.com", "", false, false},
		{"bad Host", nil, "https://a.com", "a.com:x", false, false},
		{"origin with path", nil, "https://a.com/x", "a.com", false, false},

		{"listed", []string{"https://app.example.com", "http://localhost:3000"}, "http://localhost:3000", "api.example.com", false, true},
		{"listed, case", []string{"https://App.Example.com"}, "https://app.example.COM", "api.example.com", true, true},
		{"listed with default port", []string{"https://a.com:443"}, "https://a.com", "x", false, true},
		{"listed without default port", []string{"https://a.com"}, "https://a.com:443", "x", false, true},
		{"listed, other port", []string{"https://a.com"}, "https://a.com:8443", "x", false, false},
		{"listed, other scheme", []string{"https://a.com"}, "http://a.com", "x", false, false},
		{"listed, trimmed", []string{" https://a.com "}, "https://a.com", "x", false, true},
		{"listed extension", []string{"chrome-extension://abcdef"}, "chrome-extension://abcdef", "x", false, true},
		{"not listed", []string{"https://app.example.com"}, "https://evil.example", "evil.example", false, false},
		// A list replaces the own-host default rather than adding to it.
		{"own host not listed", []string{"https://app.example.com"}, "https://api.example.com", "api.example.com", true, false},
		{"null not listed", []string{"https://a.com"}, "null", "a.com", false, false},
		{"unparseable", []string{"https://a.com"}, "https://a.com/", "a.com", false, false},
		{"unparseable, no scheme", []string{"https://a.com"}, "a.com", "a.com", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewOriginPolicy(tt.allowed)
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Allow(tt.origin, tt.host, tt.tls); got != tt.want {
				t.Errorf("Allow(%q, %q, tls %v) with %q = %v, want %v", tt.origin, tt.host, tt.tls, tt.allowed, got, tt.want)
			}
		})
	}
}

// A policy nobody built behaves as the default, so a caller that forgets
// to configure one fails closed to its own host rather than open.
func TestOriginPolicyNil(t *testing.T) {
	var p *OriginPolicy
	if !p.Allow("https://a.com", "a.com", true) || p.Allow("https://b.com", "a.com", true) {
		t.Error("a nil policy does not allow exactly the own host")
	}
	if !(&OriginPolicy{}).Allow("", "a.com", false) {
		t.Error("a zero policy refuses a request without Origin")
	}
}

// The Origin header comes from the network; parsing it must not panic, and
// what it accepts must survive being written back out, since the allow-list
// is matched on that form.
func FuzzParseOrigin(f *testing.F) {
	for _, seed := range []string{
		"https://a.com", "http://localhost:3000", "HTTPS://A.COM:443", "http://[::1]:0080",
		"null", "", "://", "a://[", "a://[]", "a://:", "x://a:99999", "https://a.com/", "chrome-extension://abc",
	} {
		f.Add(seed, "a.com:443", true)
	}
	p, err := NewOriginPolicy([]string{"https://a.com", "http://b.com:8080"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s, host string, tls bool) {
		p.Allow(s, host, tls)
		(*OriginPolicy)(nil).Allow(s, host, tls)
		o, err := parseOrigin(s)
		if err != nil {
			return
		}
		again, err := parseOrigin(o.String())
		if err != nil || again != o {
			t.Errorf("parseOrigin(%q) = %+v, but its String %q parses as %+v, %v", s, o, o.String(), again, err)
		}
	})
}
