package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawClient is a connection that sends exactly the bytes a test writes, so
// that no HTTP library tidies a request up on its way to Cablecar.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

// dialFrom connects to addr from the loopback address from ("" for any).
func dialFrom(t *testing.T, addr, from string) *rawClient {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { conn.Close() })
	// Only so that a broken build cannot hang the run: every read below
	// expects something much sooner.
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawClient{t: t, conn: conn, br: bufio.NewReader(conn)}
}

func (r *rawClient) send(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.conn, s); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// response reads one whole response.
func (r *rawClient) response(method string) (*http.Response, string) {
	r.t.Helper()
	resp, err := http.ReadResponse(r.br, &http.Request{Method: method})
	if err != nil {
		r.t.Fatalf("reading a response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		r.t.Fatalf("reading a response body: %v", err)
	}
	return resp, string(body)
}

// expectClosed fails unless Cablecar closes the connection with nothing
// more written: no second response to the rest of a refused request.
func (r *rawClient) expectClosed(why string) {
	r.t.Helper()
	rest, err := io.ReadAll(r.br)
	if err != nil || len(rest) > 0 {
		r.t.Errorf("%s: want the connection closed with nothing more; got %q, %v", why, rest, err)
	}
}

// A client that starts an upload and goes silent is cut with 408 within
// proxy.client_body_timeout, and the app connection it held is given back:
// with one app connection in all, the next request is served at once, and
// Puma never ran the half-sent request.
func TestProxySlowUploadCut(t *testing.T) {
	t.Parallel()
	p, c := startStack(t, PumaOptions{}, map[string]any{
		"proxy.client_body_timeout": "1s",
		"proxy.max_conns":           1,
	})
	rc := dialFrom(t, c.Addr, "")
	rc.send("POST /upload HTTP/1.1\r\nHost: e2e\r\nContent-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n")
	rc.send(strings.Repeat("x", 200<<10)) // streaming to the app by now
	start := time.Now()
	resp, body := rc.response("POST")
	elapsed := time.Since(start)
	if resp.StatusCode != 408 {
		t.Fatalf("status %d %q, want 408", resp.StatusCode, body)
	}
	checkOneLineText(t, resp, []byte(body))
	if elapsed > 4*time.Second { // the contract's 1s, with a margin for a loaded machine
		t.Errorf("408 after %s; client_body_timeout is 1s", elapsed)
	}
	rc.expectClosed("after the 408")

	client := newClient(t)
	resp, got := do(t, client, newRequest(t, "GET", c.URL+"/hello", nil))
	if resp.StatusCode != 200 || string(got) != "hello world\n" {
		t.Fatalf("the next request, with max_conns 1: %d %q", resp.StatusCode, got)
	}
	if n := p.Hits("/upload"); n != 0 {
		t.Errorf("the app ran the cut upload %d times", n)
	}
	WaitFor(t, 5*time.Second, `cablecar_proxy_client_limits_total{limit="body_timeout"} to count it`, func() bool {
		return c.Metric("cablecar_proxy_client_limits_total", "limit=body_timeout") == 1
	})
}

// An upload that keeps trickling is not cut, however long it takes: the
// timeout is between two reads, not for the whole body.
func TestProxyTricklingUploadServed(t *testing.T) {
	t.Parallel()
	_, c := startStack(t, PumaOptions{}, map[string]any{"proxy.client_body_timeout": "1s"})
	const pieces, piece = 30, 1 << 10
	rc := dialFrom(t, c.Addr, "")
	rc.send(fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: e2e\r\nContent-Length: %d\r\n\r\n", pieces*piece))
	start := time.Now()
	for i := 0; i < pieces; i++ {
		rc.send(strings.Repeat("y", piece))
		time.Sleep(100 * time.Millisecond) // the trickle: 3 s in all, a tenth of the timeout between pieces
	}
	resp, body := rc.response("POST")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d %q after %s", resp.StatusCode, body, time.Since(start))
	}
	var e struct {
		Size int `json:"body_size"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Size != pieces*piece {
		t.Fatalf("app got %q (%v), want %d bytes", body, err, pieces*piece)
	}
}

// One client address holds at most proxy.max_conns_per_client app
// connections: past that 503 with Retry-After, while another address is
// served, and the first is served again once its requests end.
func TestProxyPerClientCap(t *testing.T) {
	t.Parallel()
	p, c := startStack(t, PumaOptions{}, map[string]any{"proxy.max_conns_per_client": 2})
	ids := []string{uniqueID(t) + "-a", uniqueID(t) + "-b"}
	for _, id := range ids {
		rc := dialFrom(t, c.Addr, "127.0.0.1")
		rc.send("GET /sse?n=2&hold=20&id=" + id + " HTTP/1.1\r\nHost: e2e\r\n\r\n")
		resp, err := http.ReadResponse(rc.br, &http.Request{Method: "GET"})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("held stream %s: %v %v", id, resp, err)
		}
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || line != "data: 1\n" {
			t.Fatalf("held stream %s: first line %q, %v", id, line, err)
		}
	}

	over := dialFrom(t, c.Addr, "127.0.0.1")
	over.send("GET /hello HTTP/1.1\r\nHost: e2e\r\n\r\n")
	resp, body := over.response("GET")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third request from one address: %d Retry-After %q %q; want 503 with Retry-After",
			resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	checkOneLineText(t, resp, []byte(body))
	if n := p.Hits("/hello"); n != 0 {
		t.Errorf("the refused request reached the app (%d hits)", n)
	}

	other := dialFrom(t, c.Addr, "127.0.0.2")
	other.send("GET /hello HTTP/1.1\r\nHost: e2e\r\n\r\n")
	if resp, body := other.response("GET"); resp.StatusCode != 200 || body != "hello world\n" {
		t.Fatalf("another address while the first is at its cap: %d %q", resp.StatusCode, body)
	}
	WaitFor(t, 5*time.Second, `cablecar_proxy_client_limits_total{limit="too_many_conns"} to count it`, func() bool {
		return c.Metric("cablecar_proxy_client_limits_total", "limit=too_many_conns") == 1
	})

	for _, id := range ids {
		p.Release(id) // the streams send their last event and end
	}
	WaitFor(t, 10*time.Second, "the first address to be served again", func() bool {
		rc := dialFrom(t, c.Addr, "127.0.0.1")
		rc.send("GET /hello HTTP/1.1\r\nHost: e2e\r\n\r\n")
		resp, _ := rc.response("GET")
		return resp.StatusCode == 200
	})
}

// RFC 9112 §6.1: Content-Length and Transfer-Encoding together are
// answered 400 and the connection closed; the app never sees the request,
// nor what was smuggled after it.
func TestProxyContentLengthAndTransferEncoding(t *testing.T) {
	t.Parallel()
	p, c := startStack(t, PumaOptions{}, nil)
	rc := dialFrom(t, c.Addr, "")
	rc.send("POST /echo HTTP/1.1\r\nHost: e2e\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"0\r\n\r\nGET /hello HTTP/1.1\r\nHost: e2e\r\n\r\n")
	resp, body := rc.response("POST")
	if resp.StatusCode != 400 {
		t.Fatalf("status %d %q, want 400", resp.StatusCode, body)
	}
	checkOneLineText(t, resp, []byte(body))
	rc.expectClosed("after Content-Length with Transfer-Encoding")
	if n, m := p.Hits("/echo"), p.Hits("/hello"); n != 0 || m != 0 {
		t.Errorf("the app saw /echo %d and /hello %d times", n, m)
	}
}

// A chunked body that breaks is answered once, 400, and the connection
// closed: its rest is never read as a second request.
func TestProxyMalformedChunkedBody(t *testing.T) {
	t.Parallel()
	_, c := startStack(t, PumaOptions{}, nil)
	for name, chunks := range map[string]string{
		"size not hex":       "zz\r\nhello\r\n0\r\n\r\n",
		"no CRLF after data": "5\r\nhelloGET /hello HTTP/1.1\r\nHost: e2e\r\n\r\n",
	} {
		rc := dialFrom(t, c.Addr, "")
		rc.send("POST /upload HTTP/1.1\r\nHost: e2e\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
		resp, body := rc.response("POST")
		if resp.StatusCode != 400 {
			t.Errorf("%s: status %d %q, want 400", name, resp.StatusCode, body)
		}
		rc.expectClosed(name)
	}
}

// Host is required, in HTTP/1.0 too: without it the app cannot tell which
// site was meant.
func TestProxyMissingHost(t *testing.T) {
	t.Parallel()
	p, c := startStack(t, PumaOptions{}, nil)
	for _, proto := range []string{"HTTP/1.0", "HTTP/1.1"} {
		resp, body := rawExchange(t, c.Addr, "GET /hello "+proto+"\r\n\r\n", "GET")
		if resp.StatusCode != 400 {
			t.Errorf("%s without Host: %d %q, want 400", proto, resp.StatusCode, body)
		}
	}
	if n := p.Hits("/hello"); n != 0 {
		t.Errorf("the app saw /hello %d times", n)
	}
	resp, body := rawExchange(t, c.Addr, "GET /hello HTTP/1.0\r\nHost: e2e\r\n\r\n", "GET")
	if resp.StatusCode != 200 || string(body) != "hello world\n" {
		t.Errorf("HTTP/1.0 with Host: %d %q", resp.StatusCode, body)
	}
}

// A handshake right after the app died, while Cablecar's pool still holds
// several keep-alive connections to it, is 503 as SPEC §2 says — every
// one of them, not a 502 for each stale connection met on the way.
func TestHandshakeRightAfterAppKilledIs503(t *testing.T) {
	t.Parallel()
	p, c := startStack(t, PumaOptions{}, nil)
	// Accepts that overlap leave as many connections in the pool; asking
	// for no events keeps webhooks from using them before the kill.
	const warm = 4
	var wg sync.WaitGroup
	for i := 0; i < warm; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := c.URL + target("/ws/slowaccept/"+NewTag(t), "sleep", "0.5", "events", "")
			if _, resp, err := DialWS(t, url, nil); err != nil {
				t.Errorf("warming handshake: %v%s", err, describeResponse(resp))
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	p.Kill()
	for i := 0; i < warm+2; i++ {
		resp, body := refused(t, c.URL+"/ws/chat/"+NewTag(t), nil)
		if resp.StatusCode != 503 {
			t.Fatalf("handshake %d after the app was killed: %d %q, want 503", i+1, resp.StatusCode, body)
		}
	}
}
