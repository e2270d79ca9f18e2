package e2e

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestWSAppDirect checks the /ws side of the test app against Puma alone,
// sending it what Cablecar would, so that a failing WebSocket test can be
// trusted to be about Cablecar.
func TestWSAppDirect(t *testing.T) {
	t.Parallel()
	p := StartPuma(t, PumaOptions{})
	client := *p.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	send := func(method, target, id string, body string) (*http.Response, string) {
		t.Helper()
		req := newRequest(t, method, p.URL+target, strings.NewReader(body))
		if method == "GET" {
			req.Header.Set("Cablecar-Upgrade", "websocket")
			req.Body = nil
		} else {
			req.Header.Set("Content-Type", "application/json")
		}
		req.Header.Set("Cablecar-Connection-Id", id)
		req.Header.Set("Cablecar-Signature", "t=1,v1=00")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, target, err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp, string(data)
	}

	tgt := target("/ws/chat/direct", "tag", "direct", "subscribe", "a, b", "state", "s", "first", "hi {id}",
		"protocol", "p2", "cookie", "1", "events", "open,close", "events_path", "/ws/other")
	resp, body := send("GET", tgt, "c1", "")
	h := resp.Header
	if resp.StatusCode != 200 || body != "hi c1" || h.Get("Cablecar-Accept") != "websocket" ||
		h.Get("Cablecar-Subscribe") != "a, b" || h.Get("Cablecar-State") != "s" || h.Get("Cablecar-Events") != "open,close" ||
		h.Get("Cablecar-Events-Path") != "/ws/other" || h.Get("Sec-WebSocket-Protocol") != "p2" || len(h.Values("Set-Cookie")) != 2 {
		t.Fatalf("accept: %d %q %v", resp.StatusCode, body, h)
	}
	for _, tc := range []struct {
		path   string
		status int
		header string
	}{
		{"/ws/reject401", 401, "WWW-Authenticate"},
		{"/ws/redirect/x", 302, "Location"},
		{"/ws/noaccept", 200, ""},
		{"/ws/badprotocol", 200, "Sec-WebSocket-Protocol"},
	} {
		resp, body := send("GET", tc.path, "c-"+tc.path, "")
		accept := resp.Header.Get("Cablecar-Accept")
		if resp.StatusCode != tc.status || (tc.header != "" && resp.Header.Get(tc.header) == "") ||
			(accept != "") != (tc.path == "/ws/badprotocol") {
			t.Errorf("%s: %d %q %v", tc.path, resp.StatusCode, body, resp.Header)
		}
	}
	if ids := AppConns(t, p, "direct"); len(ids) != 1 || ids[0] != "c1" {
		t.Fatalf("/ws/_conns?tag=direct: %v", ids)
	}

	for _, tc := range []struct {
		events, status, ctype, body string
	}{
		{`{"id":"c1:1","type":"open"},{"id":"c1:2","type":"message","data":"echo:x"}`, "200", "application/json", `{"send":["x"]}`},
		{`{"id":"c1:3","type":"message","data":"text:plain"}`, "200", "text/plain", "plain"},
		{`{"id":"c1:4","type":"message","data":"AAEC","binary":true}`, "200", "application/json", `{"send":[{"data":"AAEC","binary":true}]}`},
		{`{"id":"c1:5","type":"message","data":"pub:room:1:hi"}`, "200", "application/json", `{"publish":[{"channel":"room:1","data":"hi","except_self":true}]}`},
		{`{"id":"c1:6","type":"message","data":"close:4000:bye: now"}`, "200", "application/json", `{"close":{"code":4000,"reason":"bye: now"}}`},
		{`{"id":"c1:7","type":"message","data":"failonce"}`, "500", "text/plain", "status 500 as asked\n"},
		{`{"id":"c1:7","type":"message","data":"failonce"}`, "204", "", ""},
		{`{"id":"c1:8","type":"message","data":"gone"},{"id":"c1:9","type":"message","data":"echo:y"}`, "410", "text/plain", "status 410 as asked\n"},
		{`{"id":"c1:10","type":"close","code":1000,"reason":"","by":"client"}`, "204", "", ""},
	} {
		resp, body := send("POST", "/ws/other", "c1", `{"connection":{"id":"c1","state":"s","channels":["a"]},"events":[`+tc.events+`]}`)
		if got := resp.Status[:3]; got != tc.status || resp.Header.Get("Content-Type") != tc.ctype || body != tc.body {
			t.Errorf("events %s: %s %q %q; want %s %q %q", tc.events, got, resp.Header.Get("Content-Type"), body, tc.status, tc.ctype, tc.body)
		}
	}

	l := AppLog(t, p, "c1")
	if !l.Known || len(l.Accepts) != 1 || l.Accepts[0].PathAndQuery() != tgt || len(l.Batches) != 9 {
		t.Fatalf("log: known %v, %d accepts, %d batches", l.Known, len(l.Accepts), len(l.Batches))
	}
	if v, _ := l.Accepts[0].Header("cablecar-signature"); v != "t=1,v1=00" {
		t.Errorf("accept Cablecar-Signature recorded as %q", v)
	}
	if n := l.Attempts["c1:7"]; n != 2 || len(l.BatchesWith("c1:7")) != 2 {
		t.Errorf("c1:7 attempts %d", n)
	}
	if ev, ok := l.Close(); !ok || ev.By != "client" || ev.Code != 1000 {
		t.Errorf("close event %v %v", ev, ok)
	}
	if got := len(l.Events()); got != 10 {
		t.Errorf("%d distinct events, want 10: %v", got, l.Events())
	}
	b := l.Batches[0]
	if b.Body == nil || b.Body.Connection.State == nil || *b.Body.Connection.State != "s" || b.Status != 200 ||
		b.AnsweredAt < b.ReceivedAt || !strings.HasPrefix(b.Raw, `{"connection"`) {
		t.Errorf("first batch %+v", b)
	}
	checkOneInFlight(t, l)
	if l := AppLog(t, p, "nobody"); l.Known || len(l.Batches) != 0 {
		t.Errorf("unknown connection: %+v", l)
	}
}
