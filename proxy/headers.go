package proxy

import (
	"bytes"
	"math/rand/v2"
	"net"
	"net/netip"

	"github.com/valyala/fasthttp"
)

// hopHeaders are meaningful only for one connection and never forwarded
// (RFC 9110 §7.6.1, plus the older Proxy-Connection and Keep-Alive that
// clients still send), in lower case. Headers named in Connection are
// removed as well.
var hopHeaders = [...]string{
	"connection",
	"proxy-connection",
	"keep-alive",
	"proxy-authenticate",
	"proxy-authorization",
	"te",
	"trailer",
	"transfer-encoding",
	"upgrade",
}

const cablecarPrefix = "cablecar-"

// stripper finds, in one pass over a header, the hop-by-hop headers, every
// header a Connection header names, and — for requests — every Cablecar-*
// header, Cablecar_* too (only Cablecar sets those, so a client must not be
// able to forge one). Most messages carry none of them: then nothing is
// copied or deleted.
// Request and response headers are walked by two small concrete loops
// because ranging over All() through an interface moves the iterator's
// state to the heap on every call.
type stripper struct {
	present uint16   // bit i: hopHeaders[i] is in the header
	extra   [][]byte // Connection-named and Cablecar-* names, copied
	lower   [24]byte
}

func (s *stripper) see(k, v []byte, cablecar bool) {
	if i := hopIndex(k, &s.lower); i >= 0 {
		s.present |= 1 << i
		if i == 0 {
			s.extra = appendConnectionTokens(s.extra, v, &s.lower)
		}
		return
	}
	if cablecar && cablecarName(k) {
		s.extra = append(s.extra, append([]byte(nil), k...))
	}
}

func (s *stripper) apply(del func(string)) {
	for i, name := range hopHeaders {
		if s.present&(1<<i) != 0 {
			del(name)
		}
	}
	for _, name := range s.extra {
		del(string(name))
	}
}

func stripRequestHeaders(h *fasthttp.RequestHeader) {
	var s stripper
	for k, v := range h.All() {
		s.see(k, v, true)
	}
	if s.present != 0 || len(s.extra) > 0 {
		s.apply(h.Del)
	}
}

func stripResponseHeaders(h *fasthttp.ResponseHeader) {
	var s stripper
	for k, v := range h.All() {
		s.see(k, v, false)
	}
	if s.present != 0 || len(s.extra) > 0 {
		s.apply(h.Del)
	}
}

func hopIndex(k []byte, lower *[24]byte) int {
	if len(k) > len(lower) {
		return -1
	}
	l := lower[:len(k)]
	for i, c := range k {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		l[i] = c
	}
	for i, name := range hopHeaders {
		if string(l) == name {
			return i
		}
	}
	return -1
}

// appendConnectionTokens adds the header names a Connection value lists,
// skipping those that are hop-by-hop anyway.
func appendConnectionTokens(dst [][]byte, v []byte, lower *[24]byte) [][]byte {
	for len(v) > 0 {
		var t []byte
		t, v, _ = bytes.Cut(v, []byte{','})
		if t = bytes.TrimSpace(t); len(t) == 0 || bytes.EqualFold(t, []byte("close")) || hopIndex(t, lower) >= 0 {
			continue
		}
		dst = append(dst, append([]byte(nil), t...))
	}
	return dst
}

// cablecarName reports whether a header name is one of Cablecar's own
// (SPEC §1): it starts with "cablecar-" in any case, with "_" read as "-".
// Rack servers upcase a name and turn "-" into "_" for the env, so
// Cablecar_Claims and Cablecar-Claims both arrive as HTTP_CABLECAR_CLAIMS;
// a client must be able to forge neither.
func cablecarName[T string | []byte](name T) bool {
	if len(name) < len(cablecarPrefix) {
		return false
	}
	for i := 0; i < len(cablecarPrefix); i++ {
		c := name[i]
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case c == '_':
			c = '-'
		}
		if c != cablecarPrefix[i] {
			return false
		}
	}
	return true
}

// IsCablecarHeader reports whether name is one only Cablecar may set on a
// request to the app, whatever its case and whichever of "-" and "_" it
// uses.
func IsCablecarHeader(name string) bool { return cablecarName(name) }

// setForwarded writes X-Forwarded-For (appended to), -Proto and -Host. The
// Proto and Host a client sent are kept only when the peer is a trusted
// proxy (a load balancer that terminated TLS knows better than we do);
// anyone else could use them to fool the app's URL generation.
func (p *Proxy) setForwarded(ctx *fasthttp.RequestCtx, out *fasthttp.RequestHeader) {
	peer := remoteAddr(ctx)
	var buf [128]byte
	xff := buf[:0]
	for _, v := range ctx.Request.Header.PeekAll("X-Forwarded-For") {
		if len(xff) > 0 {
			xff = append(xff, ", "...)
		}
		xff = append(xff, v...)
	}
	if peer.IsValid() {
		if len(xff) > 0 {
			xff = append(xff, ", "...)
		}
		xff = peer.AppendTo(xff)
	}
	out.Del("X-Forwarded-For")
	if len(xff) > 0 {
		out.SetBytesV("X-Forwarded-For", xff)
	}

	trusted := p.trusted(peer)
	if !trusted || len(ctx.Request.Header.Peek("X-Forwarded-Proto")) == 0 {
		proto := "http"
		if ctx.IsTLS() {
			proto = "https"
		}
		out.Set("X-Forwarded-Proto", proto)
	}
	if !trusted || len(ctx.Request.Header.Peek("X-Forwarded-Host")) == 0 {
		out.SetBytesV("X-Forwarded-Host", ctx.Request.Header.Host())
	}
}

func remoteAddr(ctx *fasthttp.RequestCtx) netip.Addr {
	if a, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

func (p *Proxy) trusted(ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	for _, pfx := range p.cfg.TrustedProxies {
		if pfx.Contains(ip) {
			return true
		}
	}
	return false
}

// requestID returns the client's X-Request-Id when it is one an app can
// safely log and echo (Rails keeps ids of this shape too), else a new one.
func requestID(h *fasthttp.RequestHeader, dst []byte) []byte {
	if id := h.Peek("X-Request-Id"); validRequestID(id) {
		return append(dst, id...)
	}
	return newRequestID(dst)
}

func validRequestID(id []byte) bool {
	if len(id) == 0 || len(id) > 200 {
		return false
	}
	for _, c := range id {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-' || c == '_' || c == '.' || c == ':' || c == '@' || c == '/' || c == '+' || c == '=':
		default:
			return false
		}
	}
	return true
}

// newRequestID appends a random version-4 UUID. math/rand/v2's generator is
// seeded from the OS and is not predictable enough to matter here: request
// ids need to be unique, not secret.
func newRequestID(dst []byte) []byte {
	const hexdigits = "0123456789abcdef"
	var b [16]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := 0; i < 8; i++ {
		b[i] = byte(hi >> (8 * i))
		b[8+i] = byte(lo >> (8 * i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst = append(dst, '-')
		}
		dst = append(dst, hexdigits[c>>4], hexdigits[c&0x0f])
	}
	return dst
}

// IsWebSocketUpgrade reports whether the request asks to become a WebSocket.
func IsWebSocketUpgrade(h *fasthttp.RequestHeader) bool {
	return h.ConnectionUpgrade() && bytes.EqualFold(bytes.TrimSpace(h.Peek("Upgrade")), []byte("websocket"))
}

// PrepareHeaders copies the client's request headers into h as the
// pass-through sends them to the app: hop-by-hop headers (Upgrade and
// Connection among them) and Cablecar-* removed, X-Forwarded-* and
// X-Request-Id set. It is for requests Cablecar makes to the app on a
// client's behalf, such as the WebSocket accept, so that the app sees the
// same client, host and request id either way. It returns the request id.
func (p *Proxy) PrepareHeaders(ctx *fasthttp.RequestCtx, h *fasthttp.RequestHeader) string {
	ctx.Request.Header.CopyTo(h)
	stripRequestHeaders(h)
	h.Del("Expect")
	h.ResetConnectionClose()
	p.setForwarded(ctx, h)
	id := requestID(&ctx.Request.Header, nil)
	h.SetBytesV("X-Request-Id", id)
	return string(id)
}

// StripResponseHeaders removes what must not be relayed from an app's
// response to the client: the hop-by-hop headers and those named in its
// Connection header.
func StripResponseHeaders(h *fasthttp.ResponseHeader) { stripResponseHeaders(h) }
