package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The JWT amendments of SPEC §6 (issue 11, item 6), against the real
// binary: RFC 6750's WWW-Authenticate (no error code without a token), a
// numeric sub, leeway 0s meaning none, a registered claim of the wrong type
// refused as malformed, and a handshake before the first JWKS key set
// waiting for it, then 503 with Retry-After, never 401.

// jwksFirstWait is how long a handshake waits for the first key set.
const jwksFirstWait = 5 * time.Second

func TestJWTAmendments(t *testing.T) {
	t.Parallel()
	p := StartPuma(t, PumaOptions{})
	t.Run("HMAC", func(t *testing.T) {
		t.Parallel()
		testJWTAmendHMAC(t, p)
	})
	t.Run("JWKSNotYet", func(t *testing.T) {
		t.Parallel()
		testJWTAmendJWKSNotYet(t, p)
	})
}

// challenged dials without a usable token and fails unless Cablecar
// answers as RFC 6750 §3.1 says for a request that carries none: 401 with
// a Bearer challenge and no error code (the client did not try, so it did
// not fail). It returns the body.
func challenged(t *testing.T, rawURL string, header http.Header, protocols ...string) string {
	t.Helper()
	resp, body := refused(t, rawURL, header, protocols...)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d %q, want 401", resp.StatusCode, body)
	}
	wa := resp.Header.Values("WWW-Authenticate")
	if len(wa) != 1 {
		t.Fatalf("WWW-Authenticate %q, want one challenge", wa)
	}
	scheme, params, _ := strings.Cut(wa[0], " ")
	if scheme != "Bearer" {
		t.Errorf("WWW-Authenticate %q, want the Bearer scheme", wa[0])
	}
	if params != "" && !strings.HasPrefix(params, "realm=") || strings.Contains(params, "error") {
		t.Errorf("WWW-Authenticate %q: a missing token must get no error code (RFC 6750 §3.1), at most a realm", wa[0])
	}
	return body
}

// keysNotYet dials with tok, an asymmetric token, while Cablecar has no
// key set yet, and fails unless it waits for one (jwksFirstWait) and then
// answers 503 with Retry-After: not 401, which would tell the client its
// token is bad.
func keysNotYet(t *testing.T, rawURL string, header http.Header, tok string, protocols ...string) {
	t.Helper()
	start := time.Now()
	resp, body := refused(t, rawURL, header, protocols...)
	waited := time.Since(start)
	t.Logf("answered %d %q after %s", resp.StatusCode, body, waited.Round(time.Millisecond))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d %q, want 503", resp.StatusCode, body)
	}
	ra := resp.Header.Get("Retry-After")
	if n, err := strconv.Atoi(ra); err != nil || n < 1 {
		t.Errorf("Retry-After %q, want a number of seconds", ra)
	}
	if wa := resp.Header.Get("WWW-Authenticate"); wa != "" {
		t.Errorf("WWW-Authenticate %q on a 503: the token was not found bad", wa)
	}
	// The contract: it waits up to 5s for the keys. A lower bound only:
	// how much later the answer comes depends on the machine.
	if waited < jwksFirstWait {
		t.Errorf("answered after %s, without waiting %s for the key set", waited, jwksFirstWait)
	}
	for name, vs := range resp.Header {
		for _, v := range vs {
			if strings.Contains(v, tok) {
				t.Errorf("the 503 echoes the token in %s", name)
			}
		}
	}
	if strings.Contains(body, tok) {
		t.Error("the 503 body echoes the token")
	}
}

func testJWTAmendHMAC(t *testing.T, p *Puma) {
	book := &secretBook{}
	secret := book.add("jwt-amend-" + randomHex(16))
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{
		"auth.jwt.required":       true,
		"auth.jwt.hmac_secret":    secret,
		"auth.jwt.issuer":         jwtIssuer,
		"auth.jwt.audience":       jwtAudience,
		"auth.jwt.leeway":         "0s",
		"websocket.ping_interval": "500ms",
	}})
	token := func(claims map[string]any) string { return book.add(signJWT("HS256", "", []byte(secret), claims)) }

	t.Run("cases", func(t *testing.T) {
		// No token at all: a challenge without an error code.
		t.Run("MissingTokenChallenge", func(t *testing.T) {
			t.Parallel()
			for _, tc := range []struct {
				name      string
				query     []string
				header    http.Header
				protocols []string
			}{
				{name: "nothing"},
				{name: "empty query", query: []string{"token", ""}},
				{name: "other scheme", header: http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}},
				{name: "other protocol", protocols: []string{"chat.v1"}},
			} {
				path := "/ws/chat/jwt-amend-missing-" + strings.ReplaceAll(tc.name, " ", "-") + "-" + NewTag(t)
				body := challenged(t, c.URL+target(path, tc.query...), tc.header, tc.protocols...)
				t.Logf("%s: %q", tc.name, body)
				if n := p.Hits(path); n != 0 {
					t.Errorf("%s: the app was asked (%d hits)", tc.name, n)
				}
			}
		})

		// A token that is bad: error="invalid_token" and why, never the
		// token. A registered claim of the wrong type is malformed.
		t.Run("BadTokenChallenge", func(t *testing.T) {
			t.Parallel()
			good := jwtClaims("user-amend-bad")
			for _, tc := range []struct{ name, tok, reason string }{
				{"bad signature", signJWT("HS256", "", []byte("not-the-secret"), good), "bad signature"},
				{"expired", token(with(good, "exp", time.Now().Add(-time.Hour).Unix())), "token expired"},
				{"not a JWT", "abc.def", "malformed token"},
				{"exp a string", token(with(good, "exp", strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10))), "malformed token"},
				{"nbf a string", token(with(good, "nbf", strconv.FormatInt(time.Now().Unix(), 10))), "malformed token"},
				{"iat a string", token(with(good, "iat", strconv.FormatInt(time.Now().Unix(), 10))), "malformed token"},
				{"iss a number", token(with(good, "iss", 7)), "malformed token"},
				{"aud a number", token(with(good, "aud", 7)), "malformed token"},
				{"aud a list with a number", token(with(good, "aud", []any{jwtAudience, 7})), "malformed token"},
				{"sub true", token(with(good, "sub", true)), "malformed token"},
			} {
				path := "/ws/chat/jwt-amend-bad-" + strings.ReplaceAll(tc.name, " ", "-") + "-" + NewTag(t)
				reason := unauthorized(t, c.URL+path, bearer(tc.tok), tc.tok)
				if reason != tc.reason {
					t.Errorf("%s: error_description %q, want %q", tc.name, reason, tc.reason)
				}
				if n := p.Hits(path); n != 0 {
					t.Errorf("%s: the app was asked (%d hits)", tc.name, n)
				}
			}
		})

		// sub: 42, as Rails' user.id: accepted, and the claims reach the
		// app as the token had them, the number a number.
		t.Run("NumericSub", func(t *testing.T) {
			t.Parallel()
			claims := with(jwtClaims(""), "sub", 42)
			_, id := ConnectWS(t, c, p, "/ws/chat/jwt-amend-numeric-sub", bearer(token(claims)))
			a := acceptedWithClaims(t, p, id, claims)
			got, _ := a.Header("Cablecar-Claims")
			var m map[string]json.RawMessage
			if err := json.Unmarshal([]byte(got), &m); err != nil || string(m["sub"]) != "42" {
				t.Errorf("Cablecar-Claims %s: sub should be the number 42, as the token had it", got)
			}
		})

		// A token after a ';' in a plain request's query is kept out of
		// the access log as one after a '&' is (checkLogs, below).
		t.Run("SemicolonQueryNotLogged", func(t *testing.T) {
			t.Parallel()
			tok := token(jwtClaims("user-amend-semicolon"))
			code, body, err := get(newClient(t), c.URL+"/hello?x=1;token="+tok, jwtWait)
			if err != nil || code != 200 || body != "hello world\n" {
				t.Fatalf("plain GET with ?x=1;token=: %d %q %v", code, body, err)
			}
			WaitFor(t, jwtWait, "the access log line", func() bool { return strings.Contains(c.Logs()+c.Stdout(), "x=1;token=[FILTERED]") })
		})

		// leeway: 0s is none: a token expired a second ago is refused
		// (the default, 30s, would let it in), and an open connection is
		// closed once exp itself passes.
		t.Run("LeewayZero", func(t *testing.T) {
			t.Parallel()
			tok := token(with(jwtClaims("user-amend-late"), "exp", time.Now().Add(-time.Second).Unix()))
			path := "/ws/chat/jwt-amend-leeway-" + NewTag(t)
			if reason := unauthorized(t, c.URL+path, bearer(tok), tok); reason != "token expired" {
				t.Errorf("a token 1s past exp with leeway 0s: %q, want token expired", reason)
			}

			exp := time.Now().Add(2 * time.Second).Unix()
			expAt := time.Unix(exp, 0)
			claims := with(jwtClaims("user-amend-expiring"), "exp", exp)
			ws, id := ConnectWS(t, c, p, target("/ws/chat/jwt-amend-expiry", "first", "welcome"), bearer(token(claims)))
			ws.ExpectText(jwtWait, "welcome")
			// Generous, and still far before exp + the default leeway.
			code, reason := ws.ExpectClose(time.Until(expAt) + 10*time.Second)
			t.Logf("closed %d %q, %s after exp", code, reason, time.Since(expAt).Round(time.Millisecond))
			if code != 1008 {
				t.Errorf("closed with %d %q, want 1008", code, reason)
			}
			if ev := WaitCloseEvent(t, p, id, jwtWait); ev.By != "expired" {
				t.Errorf("close event %v, want by expired", ev)
			}
		})
	})
	book.checkLogs(t, c)
}

// heldJWKS serves a key set whose answers wait until release: the first
// key set has not arrived for as long as the test holds it.
type heldJWKS struct {
	jwksServer
	gate    chan struct{}
	release func()
}

func newHeldJWKS() *heldJWKS {
	h := &heldJWKS{gate: make(chan struct{})}
	var once sync.Once
	h.release = func() { once.Do(func() { close(h.gate) }) }
	return h
}

func (h *heldJWKS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case <-h.gate:
	case <-r.Context().Done():
		return
	}
	h.jwksServer.ServeHTTP(w, r)
}

func testJWTAmendJWKSNotYet(t *testing.T, p *Puma) {
	book := &secretBook{}
	key := newRSAKey(t, "held-1", "RS256")
	jwks := newHeldJWKS()
	jwks.serve(key.jwk)
	srv := httptest.NewServer(jwks)
	t.Cleanup(srv.Close)
	t.Cleanup(jwks.release) // first: the server's Close waits for held answers

	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{
		"auth.jwt.required": true,
		"auth.jwt.jwks_url": srv.URL + "/jwks.json",
		"auth.jwt.issuer":   jwtIssuer,
		"auth.jwt.audience": jwtAudience,
	}})

	// Every source waits the same way; the three wait side by side.
	t.Run("held", func(t *testing.T) {
		for _, source := range []string{"header", "query", "protocol"} {
			t.Run(source, func(t *testing.T) {
				t.Parallel()
				tok := book.add(key.sign(jwtClaims("user-held-" + source)))
				path := "/ws/chat/jwks-held-" + source + "-" + NewTag(t)
				switch source {
				case "header":
					keysNotYet(t, c.URL+path, bearer(tok), tok)
				case "query":
					keysNotYet(t, c.URL+target(path, "token", tok), nil, tok)
				case "protocol":
					keysNotYet(t, c.URL+path, nil, tok, "bearer."+tok, "chat.v1")
				}
				if n := p.Hits(path); n != 0 {
					t.Errorf("a handshake refused for want of keys reached the app (%d hits)", n)
				}
			})
		}
	})
	// A bad token is still bad: one that is not even a JWT does not wait
	// for keys, and gets its 401.
	garbage := "not-a-jwt"
	unauthorized(t, c.URL+"/ws/chat/jwks-held-garbage-"+NewTag(t), bearer(garbage), garbage)

	// Once the key set arrives, the same kind of token passes.
	jwks.release()
	claims := jwtClaims("user-held-released")
	tok := book.add(key.sign(claims))
	tag := NewTag(t)
	WaitFor(t, 20*time.Second, "a handshake to pass once the key set is served", func() bool {
		ok, _ := dialTimed(t, c.URL+target("/ws/chat/jwks-held-released", "tag", tag), bearer(tok))
		return ok
	})
	acceptedWithClaims(t, p, ConnID(t, p, tag), claims)

	book.checkLogs(t, c)
}
