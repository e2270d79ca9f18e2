package auth

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// OriginPolicy decides which web pages may open a WebSocket to Cablecar
// (SPEC §6, websocket.allowed_origins). Browsers send cookies with a
// WebSocket handshake whatever page starts it, so without this check any
// site a user visits could act as that user (cross-site WebSocket
// hijacking); the Origin header is the one thing such a page cannot forge.
//
// A nil or zero OriginPolicy allows only the request's own host, the
// default of an empty allow-list.
type OriginPolicy struct {
	any     bool
	allowed map[string]struct{} // canonical origins, see origin.String
}

// NewOriginPolicy builds a policy from allowed: exact origins such as
// "https://app.example.com" or "http://localhost:3000", or "*" for any.
// Scheme and host are compared case-insensitively and a default port is
// the same as none ("https://a.com:443" is "https://a.com"). An empty list
// allows only the request's own host. The error names the first bad entry.
func NewOriginPolicy(allowed []string) (*OriginPolicy, error) {
	p := &OriginPolicy{}
	for _, entry := range allowed {
		s := strings.TrimSpace(entry)
		switch s {
		case "*":
			p.any = true
			continue
		case "":
			return nil, errors.New(`allowed origin "" is empty`)
		}
		if strings.EqualFold(s, "null") {
			// Sandboxed frames, file: pages and some redirects all send
			// "null", so listing it would let in pages of any site.
			return nil, fmt.Errorf(`allowed origin %q cannot be listed: pages of any site may send it; use "*" if any origin is meant`, entry)
		}
		o, err := parseOrigin(s)
		if err != nil {
			return nil, fmt.Errorf("allowed origin %q %w", entry, err)
		}
		if p.allowed == nil {
			p.allowed = make(map[string]struct{})
		}
		p.allowed[o.String()] = struct{}{}
	}
	return p, nil
}

// Allow reports whether a handshake with the Origin header origin, sent to
// the Host header host, may go on; tls says whether it arrived over TLS.
//
// A request without Origin is not from a browser, so it carries no
// ambient cookies of a victim and is allowed: what guards it is the app's
// own authentication. "null" and anything that is not an origin are
// refused unless "*" is configured.
//
// With an empty allow-list the origin must name the request's own host and
// port. The request's scheme cannot be known behind a proxy that ends TLS,
// so a Host without a port is taken to use the origin scheme's default
// port; but a request known to have come over TLS is refused to plain-http
// pages, which anyone on their network path could have written.
func (p *OriginPolicy) Allow(origin, host string, tls bool) bool {
	if origin == "" || p != nil && p.any {
		return true
	}
	o, err := parseOrigin(origin)
	if err != nil {
		return false
	}
	if p != nil && len(p.allowed) > 0 {
		_, ok := p.allowed[o.String()]
		return ok
	}
	switch {
	case o.scheme == "https":
	case o.scheme == "http" && !tls:
	default:
		return false
	}
	h, port, err := splitHostPort(host)
	if err != nil {
		return false
	}
	if port == "" {
		port = defaultPort(o.scheme)
	}
	oport := o.port
	if oport == "" {
		oport = defaultPort(o.scheme)
	}
	return strings.EqualFold(h, o.host) && port == oport
}

// origin is a parsed origin: scheme and host lower-cased, port in decimal
// without leading zeros, and "" when it is the scheme's default.
type origin struct {
	scheme, host, port string
}

func (o origin) String() string {
	if o.port == "" {
		return o.scheme + "://" + o.host
	}
	return o.scheme + "://" + o.host + ":" + o.port
}

// parseOrigin reads scheme://host[:port] (RFC 6454 serialisation). Any
// scheme is accepted, since browser extensions and app shells send their
// own (chrome-extension://…, capacitor://…). The error reads after the
// value: "… has a path".
func parseOrigin(s string) (origin, error) {
	const form = "(an origin is scheme://host[:port], e.g. \"https://example.com\")"
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || !validScheme(scheme) {
		return origin{}, errors.New("has no scheme " + form)
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		return origin{}, fmt.Errorf("has more than scheme://host[:port] (did you mean %q?)", scheme+"://"+rest[:i])
	}
	if strings.Contains(rest, "@") {
		return origin{}, errors.New("has user info " + form)
	}
	if strings.Contains(rest, "*") {
		return origin{}, errors.New(`has a wildcard: list each origin, or use "*" alone for any`)
	}
	host, port, err := splitHostPort(rest)
	if err != nil {
		return origin{}, err
	}
	o := origin{scheme: strings.ToLower(scheme), host: strings.ToLower(host), port: port}
	if o.port == defaultPort(o.scheme) {
		o.port = ""
	}
	return o, nil
}

// validScheme follows RFC 3986: a letter, then letters, digits, + - and .
func validScheme(s string) bool {
	if s == "" || !isLetter(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isLetter(c) && !isDigit(c) && c != '+' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

// splitHostPort reads host[:port] as both the Origin and the Host header
// write it; an IPv6 host keeps its brackets, so that the two compare as
// strings. The port comes back in canonical decimal, or "" when absent.
func splitHostPort(s string) (host, port string, err error) {
	var hasPort bool
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", errors.New("has an unclosed [ in its host")
		}
		host = s[:end+1]
		switch rest := s[end+1:]; {
		case rest == "":
		case rest[0] == ':':
			port, hasPort = rest[1:], true
		default:
			return "", "", errors.New("has something other than a port after its IPv6 host")
		}
		for i := 1; i < len(host)-1; i++ {
			if c := host[i]; !isHex(c) && c != ':' && c != '.' {
				return "", "", errors.New("has an invalid IPv6 host")
			}
		}
		if len(host) == 2 {
			return "", "", errors.New("has no host")
		}
	} else {
		host = s
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, port, hasPort = s[:i], s[i+1:], true
		}
		if host == "" {
			return "", "", errors.New("has no host")
		}
		for i := 0; i < len(host); i++ {
			// Browsers send international names in punycode, so a byte
			// outside these is never part of a real origin's host.
			if c := host[i]; !isLetter(c) && !isDigit(c) && c != '-' && c != '.' && c != '_' && c != '~' {
				return "", "", fmt.Errorf("has %q in its host", c)
			}
		}
	}
	if !hasPort {
		return host, "", nil
	}
	n, ok := 0, port != "" && len(port) <= 5
	for i := 0; ok && i < len(port); i++ {
		ok = isDigit(port[i])
		n = n*10 + int(port[i]-'0')
	}
	if !ok || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("has an invalid port %q", port)
	}
	return host, strconv.Itoa(n), nil
}

func defaultPort(scheme string) string {
	switch scheme {
	case "http", "ws":
		return "80"
	case "https", "wss":
		return "443"
	}
	return ""
}

func isLetter(c byte) bool { return c|0x20 >= 'a' && c|0x20 <= 'z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }
func isHex(c byte) bool    { return isDigit(c) || c|0x20 >= 'a' && c|0x20 <= 'f' }
