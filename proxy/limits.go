package proxy

import (
	"bytes"
	"net/netip"
	"sync"

	"github.com/valyala/fasthttp"
)

// What a client is told when its address already holds
// proxy.max_conns_per_client app connections (SPEC §5). One of its own
// requests finishing frees a slot, so a second is a fair wait.
const (
	tooManyConnsRetryAfter = "1"
	tooManyConnsText       = "503 Service Unavailable: too many requests from this client at once; retry shortly\n"
)

// clientLimiter counts the app connections each client address holds, so
// that one address cannot take the whole pool (SPEC §5). An address is
// tracked only while it holds something: memory follows what is in flight,
// not how many clients ever came.
type clientLimiter struct {
	max int // 0: no cap
	mu  sync.Mutex
	n   map[netip.Addr]int
}

func newClientLimiter(max int) *clientLimiter {
	return &clientLimiter{max: max, n: make(map[netip.Addr]int)}
}

// acquire takes a slot for addr; false when addr holds max already. An
// address that could not be read (not TCP) is not capped: lumping every
// such client under one key would let one starve the others.
func (l *clientLimiter) acquire(addr netip.Addr) bool {
	if l.max <= 0 || !addr.IsValid() {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[addr] >= l.max {
		return false
	}
	l.n[addr]++
	return true
}

// release gives back a slot acquire granted.
func (l *clientLimiter) release(addr netip.Addr) {
	if l.max <= 0 || !addr.IsValid() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.n[addr]; n > 1 {
		l.n[addr] = n - 1
	} else {
		delete(l.n, addr)
	}
}

// tracked is the number of addresses holding a slot.
func (l *clientLimiter) tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.n)
}

// clientAddr is the address a request is counted against: the peer, or,
// when the peer is a trusted proxy, the X-Forwarded-For entry before the
// trusted hops. Entries are read from the right, the end our own proxies
// wrote; whatever lies left of the first untrusted one was written by the
// client and proves nothing. An entry that is not an address ends the walk
// at the last hop that was.
func (p *Proxy) clientAddr(peer netip.Addr, h *fasthttp.RequestHeader) netip.Addr {
	client := peer
	if !p.trusted(client) {
		return client
	}
	values := h.PeekAll("X-Forwarded-For")
	for i := len(values) - 1; i >= 0; i-- {
		v := values[i]
		for len(v) > 0 {
			entry := v
			if j := bytes.LastIndexByte(v, ','); j >= 0 {
				entry, v = v[j+1:], v[:j]
			} else {
				v = nil
			}
			entry = bytes.TrimSpace(entry)
			if len(entry) == 0 {
				continue
			}
			a, ok := parseHop(entry)
			if !ok {
				return client
			}
			client = a
			if !p.trusted(client) {
				return client
			}
		}
	}
	return client
}

// parseHop reads one X-Forwarded-For entry: an address, or an address with
// a port as some proxies write it ("192.0.2.1:5000", "[2001:db8::1]:443").
func parseHop(b []byte) (netip.Addr, bool) {
	s := string(b)
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// framingConflict reports a request that carries both Transfer-Encoding
// and Content-Length. fasthttp frames it by Transfer-Encoding and forgets
// the Content-Length, but a server behind us or in front of us may have
// read it the other way: that disagreement is how requests are smuggled.
// RFC 9112 §6.1 has the connection closed after answering it; we refuse it
// too rather than guess.
func framingConflict(h *fasthttp.RequestHeader) bool {
	if h.ContentLength() != -1 {
		return false // not chunked, so not both
	}
	raw := h.RawHeaders()
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		if name, _, ok := bytes.Cut(line, []byte{':'}); ok &&
			bytes.EqualFold(bytes.TrimSpace(name), []byte("Content-Length")) {
			return true
		}
	}
	return false
}

// bodyUnread reports whether the client's request may still have body
// bytes on the connection that nothing will read. Those bytes would be
// parsed as the next request on the connection, so it must be closed
// after the response.
func bodyUnread(ctx *fasthttp.RequestCtx, body *requestBody) bool {
	n := ctx.Request.Header.ContentLength()
	if n == 0 || n == -2 {
		return false // no body
	}
	return body == nil || !body.eof
}
