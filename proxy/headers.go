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
// clients still send). Headers named in Connection are removed as well.
var hopHeaders = []string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

const cablecarPrefix = "cablecar-"

// headerDeleter is what request and response headers have in common.
type headerDeleter interface {
	Del(key string)
	PeekAll(key string) [][]byte
}

// stripHopByHop removes the hop-by-hop headers of h, including every header
// that a Connection header names.
func stripHopByHop(h headerDeleter) {
	var named [8][]byte
	tokens := named[:0]
	for _, v := range h.PeekAll("Connection") {
		for _, t := range bytes.Split(v, []byte{','}) {
			if t = bytes.TrimSpace(t); len(t) > 0 {
				// Copy: Del reuses the buffers PeekAll returned.
				tokens = append(tokens, append([]byte(nil), t...))
			}
		}
	}
	for _, t := range tokens {
		h.Del(string(t))
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

// stripCablecar removes every Cablecar-* request header: only Cablecar sets
// them, so a client must not be able to forge one.
func stripCablecar(h *fasthttp.RequestHeader) {
	var found [4][]byte
	keys := found[:0]
	for k := range h.All() {
		if len(k) > len(cablecarPrefix) && hasPrefixFold(k, cablecarPrefix) {
			keys = append(keys, append([]byte(nil), k...))
		}
	}
	for _, k := range keys {
		h.DelBytes(k)
	}
}

func hasPrefixFold(b []byte, prefix string) bool {
	if len(b) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

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
