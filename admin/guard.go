package admin

import (
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// What the admin listener refuses so that no web page can drive it through
// a browser (SPEC §4). A page on any site can make the browser of someone
// on the admin host send requests to 127.0.0.1:9394:
//
//   - a cross-site request carries the page's Origin: anything but the
//     listener's own origin is refused, key or no key;
//   - a body that is not application/json is refused (415): only text/plain,
//     form and multipart bodies can be sent without a CORS preflight, which
//     this listener never grants;
//   - DNS rebinding (a name of the page's site made to resolve to
//     127.0.0.1) makes the page same-origin with a Host of that name: without
//     an api_key, only a Host that is an IP literal or localhost is
//     accepted. With a key, the page could not know it.

// refusal is why r is refused with 403, or "".
func (s *Server) refusal(r *http.Request) string {
	if origins, present := r.Header["Origin"]; present {
		if len(origins) != 1 || !sameOrigin(origins[0], r) {
			return fmt.Sprintf("Origin %.100q is not this listener's own: the admin API does not take requests from web pages", strings.Join(origins, ", "))
		}
	}
	if !s.keyed && !localHost(r.Host) {
		return fmt.Sprintf("Host %.100q is neither an IP address nor localhost, and admin.api_key is not set (a page could reach this listener by DNS rebinding): call it by IP address or localhost, or set admin.api_key", r.Host)
	}
	return ""
}

// sameOrigin says whether origin is the listener's own as r reached it:
// its scheme, and r's Host (default ports made explicit).
func sameOrigin(origin string, r *http.Request) bool {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" ||
		!strings.EqualFold(u.Scheme, scheme) || r.Host == "" {
		return false
	}
	return strings.EqualFold(withPort(u.Host, scheme), withPort(r.Host, scheme))
}

func withPort(host, scheme string) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	port := "80"
	if scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), port)
}

// localHost says whether a Host header names the listener by address
// (an IP literal) or as localhost, with or without a port: names a DNS
// rebinding could point here are neither.
func localHost(hostport string) bool {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	_, err := netip.ParseAddr(h)
	return err == nil
}

// jsonContentType is why r's Content-Type is not JSON, or "": the media
// type must be application/json, with at most a charset, which must be
// UTF-8 (the body is read as such).
func jsonContentType(r *http.Request) string {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return "no Content-Type: send the body as Content-Type: application/json"
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return fmt.Sprintf("Content-Type %.100q: send the body as application/json", ct)
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return fmt.Sprintf("Content-Type %.100q: the only parameter taken is charset=utf-8", ct)
		}
	}
	return ""
}
