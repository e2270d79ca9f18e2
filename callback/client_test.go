package callback

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/auth"
)

// acceptRequest is an accept GET as the upgrade package prepares it.
func acceptRequest(uri, host string) (*fasthttp.Request, *fasthttp.Response) {
	req, resp := &fasthttp.Request{}, &fasthttp.Response{}
	req.Header.SetMethod("GET")
	req.SetRequestURI(uri)
	if host != "" {
		req.Header.SetHost(host)
	}
	req.Header.Set("Cablecar-Upgrade", "websocket")
	req.Header.Set("Cablecar-Connection-Id", "c_a")
	req.Header.Set("Cookie", "session=s3cr3t")
	return req, resp
}

func TestAccept(t *testing.T) {
	secret := "accept-secret"
	var sigErr error
	app := startApp(t, func(r *appReq) answer {
		payload := auth.AcceptPayload(r.uri, r.header.Get("Cablecar-Connection-Id"), r.header.Get("Cablecar-Claims"))
		sigErr = auth.NewSigner([]string{secret}).Verify(r.header.Get("Cablecar-Signature"), payload, time.Now(), time.Minute)
		if r.header.Get("Cookie") != "session=s3cr3t" {
			return answer{status: 401, header: map[string]string{"WWW-Authenticate": "Bearer"}, body: "no"}
		}
		return answer{status: 200, header: map[string]string{"Cablecar-Accept": "websocket", "Cablecar-State": "st"}, body: "hello"}
	})
	c := app.client(t, func(cfg *Config) { cfg.Secrets = []string{secret} })

	// The path is signed and sent as the client gave it: not normalized.
	req, resp := acceptRequest("/chat/../a//b?room=1&x=%2F", "example.com")
	if err := c.Accept(req, resp); err != nil {
		t.Fatal(err)
	}
	if sigErr != nil {
		t.Errorf("signature: %v", sigErr)
	}
	// The claims are signed with the rest (SPEC §6).
	req, resp = acceptRequest("/chat?room=1", "example.com")
	req.Header.Set("Cablecar-Claims", `{"sub":"7","name":"Ada"}`)
	if err := c.Accept(req, resp); err != nil {
		t.Fatal(err)
	}
	if sigErr != nil {
		t.Errorf("signature of an accept with claims: %v", sigErr)
	}
	r := app.requests()[0]
	if r.uri != "/chat/../a//b?room=1&x=%2F" || r.host != "example.com" || r.method != "GET" {
		t.Errorf("sent %s %s host %s", r.method, r.uri, r.host)
	}
	if resp.StatusCode() != 200 || string(resp.Header.Peek("Cablecar-State")) != "st" || string(resp.Body()) != "hello" {
		t.Errorf("answer %d %q", resp.StatusCode(), resp.Body())
	}

	// A refusal is the app's answer, not an error.
	req, resp = acceptRequest("/chat", "example.com")
	req.Header.Del("Cookie")
	if err := c.Accept(req, resp); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode() != 401 || string(resp.Header.Peek("WWW-Authenticate")) != "Bearer" {
		t.Errorf("refusal %d", resp.StatusCode())
	}
	if got := c.metric(t, "cablecar_webhooks_total", "kind", "accept", "outcome", "rejected"); got != 1 {
		t.Errorf("rejected accepts %v", got)
	}
	if strings.Contains(c.logs.String(), "s3cr3t") {
		t.Error("a cookie reached the log")
	}
}

func TestAcceptUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := newTestClient(t, "tcp", addr, nil)
	req, resp := acceptRequest("/ws", "")
	err = c.Accept(req, resp)
	if !errors.Is(err, ErrUnreachable) || errors.Is(err, ErrTimeout) {
		t.Fatalf("Accept = %v, want ErrUnreachable", err)
	}
	if got := c.metric(t, "cablecar_webhooks_total", "kind", "accept", "outcome", "unreachable"); got != 1 {
		t.Errorf("unreachable accepts %v", got)
	}
}

func TestAcceptUnixUnreachable(t *testing.T) {
	c := newTestClient(t, "unix", t.TempDir()+"/none.sock", nil)
	req, resp := acceptRequest("/ws", "")
	if err := c.Accept(req, resp); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Accept = %v, want ErrUnreachable", err)
	}
}

func TestAcceptTimeout(t *testing.T) {
	app := startApp(t, func(r *appReq) answer { return answer{status: 200, delay: 500 * time.Millisecond} })
	c := app.client(t, func(cfg *Config) { cfg.Timeout = 100 * time.Millisecond })
	req, resp := acceptRequest("/ws", "")
	start := time.Now()
	err := c.Accept(req, resp)
	if !errors.Is(err, ErrTimeout) || errors.Is(err, ErrUnreachable) {
		t.Fatalf("Accept = %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 400*time.Millisecond {
		t.Errorf("Accept took %v with a 100ms timeout", d)
	}
	if got := c.metric(t, "cablecar_webhooks_total", "kind", "accept", "outcome", "timeout"); got != 1 {
		t.Errorf("timed-out accepts %v", got)
	}
}

func TestAcceptReplyTooLarge(t *testing.T) {
	app := startApp(t, func(r *appReq) answer {
		return answer{status: 200, body: strings.Repeat("x", 5000)}
	})
	c := app.client(t, func(cfg *Config) { cfg.MaxReplySize = 4096 })
	req, resp := acceptRequest("/ws", "")
	err := c.Accept(req, resp)
	if err == nil || errors.Is(err, ErrUnreachable) || errors.Is(err, ErrTimeout) {
		t.Fatalf("Accept = %v, want a plain error", err)
	}
}

// An events request the app does not answer in time is retried.
func TestEventsTimeoutRetried(t *testing.T) {
	app := startApp(t, func(r *appReq) answer {
		if r.n == 0 {
			return answer{status: 204, delay: 300 * time.Millisecond}
		}
		return answer{status: 204}
	})
	c := app.client(t, func(cfg *Config) { cfg.Timeout = 100 * time.Millisecond })
	s := c.NewStream(newTarget("c_to"), "c_to", "/", nil)
	s.Push(Event{Type: EventOpen})
	s.End(nil)
	waitDone(t, s)
	if got := c.metric(t, "cablecar_webhooks_total", "kind", "events", "outcome", "timeout"); got != 1 {
		t.Errorf("timed-out attempts %v", got)
	}
	if got := c.metric(t, "cablecar_webhook_events_total"); got != 1 {
		t.Errorf("events delivered %v", got)
	}
}
