package e2e

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestJWT/HMAC: tokens signed with shared secrets (see jwt_test.go for how
// to run one of them).

// jwtLeeway is the HMAC group's auth.jwt.leeway: short, so that expiry
// (at exp + leeway) is seen quickly.
const jwtLeeway = 5 * time.Second

// jwtHMACEnv is a group of tests sharing one Puma and two Cablecars:
// c requires a token (two secrets, for rotation; issuer and audience set;
// a heartbeat tick of 500ms so expiry is seen fast; signed callbacks), opt
// does not, and takes its token in access_token instead of token.
type jwtHMACEnv struct {
	p                    *Puma
	c, opt               *Cablecar
	newSecret, oldSecret string
	book                 *secretBook
}

// token is an HS256 token for claims made with the newer secret.
func (e *jwtHMACEnv) token(claims map[string]any) string {
	return e.book.add(signJWT("HS256", "", []byte(e.newSecret), claims))
}

func testJWTHMAC(t *testing.T, p *Puma) {
	book := &secretBook{}
	e := &jwtHMACEnv{
		p:         p,
		newSecret: book.add("jwt-new-" + randomHex(16)),
		oldSecret: book.add("jwt-old-" + randomHex(16)),
		book:      book,
	}
	e.c = StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{
		"auth.jwt.required":       true,
		"auth.jwt.hmac_secret":    []string{e.newSecret, e.oldSecret},
		"auth.jwt.issuer":         jwtIssuer,
		"auth.jwt.audience":       jwtAudience,
		"websocket.ping_interval": "500ms",
		"callback.secret":         wsSecret,
		"auth.jwt.leeway":         jwtLeeway.String(),
	}})
	e.opt = StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{
		"auth.jwt.required":    false,
		"auth.jwt.hmac_secret": e.newSecret,
		"auth.jwt.query_param": "access_token",
	}})

	// The group's subtests run in parallel; t.Run returns when all are
	// done, and only then are the logs complete.
	t.Run("cases", func(t *testing.T) {
		for _, test := range jwtHMACTests {
			t.Run(test.name, func(t *testing.T) {
				t.Parallel()
				test.run(t, e)
			})
		}
	})
	book.checkLogs(t, e.c, e.opt)
}

// jwtHMACTest is one subtest of the HMAC group: its name in the test's path
// and the function that runs it.
type jwtHMACTest struct {
	name string
	run  func(*testing.T, *jwtHMACEnv)
}

// jwtHMACTests are TestJWT/HMAC/cases/<name>, each the function
// testHMAC<name>; they start in this order and run in parallel.
var jwtHMACTests = []jwtHMACTest{
	{"Sources", testHMACSources},
	{"BearerProtocolAlone", testHMACBearerProtocolAlone},
	{"SourceOrder", testHMACSourceOrder},
	{"Rotation", testHMACRotation},
	{"RequiredMissing", testHMACRequiredMissing},
	{"Invalid", testHMACInvalid},
	{"Leeway", testHMACLeeway},
	{"Expiry", testHMACExpiry},
	{"DeviseShaped", testHMACDeviseShaped},
	{"PlainHTTPQueryNotLogged", testHMACPlainHTTPQueryNotLogged},
	{"Optional", testHMACOptional},
}

// A valid token through each source: 101, its claims at the app on the
// accept and on every event, and no trace of the token where it is
// Cablecar's own (the query parameter, the bearer.* subprotocol).
func testHMACSources(t *testing.T, e *jwtHMACEnv) {
	for _, source := range []string{"header", "query", "protocol"} {
		t.Run(source, func(t *testing.T) {
			t.Parallel()
			claims := jwtClaims("user-" + source)
			tok := e.token(claims)
			tag := NewTag(t)
			path := "/ws/chat/jwt-" + source
			// What the app must see: the dialed target without the token.
			appTarget := target(path, "a", "1 2", "tag", tag)
			dial := appTarget
			var (
				header    http.Header
				protocols []string
				allowed   []string
			)
			switch source {
			case "header":
				header = bearer(tok)
				// Only Cablecar sets Cablecar-* headers; a forged claim
				// must not reach the app beside the real ones.
				header.Set("Cablecar-Claims", `{"sub":"admin"}`)
				allowed = []string{"Authorization"} // passed on like any header
			case "query":
				dial = target(path, "a", "1 2", "token", tok, "tag", tag)
			case "protocol":
				protocols = []string{"bearer." + tok, "chat.v1"}
				appTarget = target(path, "a", "1 2", "tag", tag, "protocol", "chat.v1")
				dial = appTarget
			}

			ws, resp := MustDialWS(t, e.c.URL+dial, header, protocols...)
			id := ConnID(t, e.p, tag)
			a := acceptedWithClaims(t, e.p, id, claims)
			if got := a.PathAndQuery(); got != appTarget {
				t.Errorf("the app was asked about %q, want %q", got, appTarget)
			}
			if strings.Contains(a.QueryString, "token=") {
				t.Errorf("the accept's query %q still has token=", a.QueryString)
			}
			noTokenAt(t, "accept", a, tok, allowed...)
			sig, _ := a.Header("Cablecar-Signature")
			verifySignature(t, "accept request (signed over what the app sees)", sig, acceptPayload(a.PathAndQuery(), a))

			if source == "protocol" {
				if got := ws.Conn.Subprotocol(); got != "chat.v1" {
					t.Errorf("chosen subprotocol %q, want chat.v1", got)
				}
				if got := resp.Header.Values("Sec-Websocket-Protocol"); len(got) != 1 || got[0] != "chat.v1" {
					t.Errorf("101 Sec-WebSocket-Protocol %q, want [chat.v1]", got)
				}
				if got, _ := a.Header("Sec-WebSocket-Protocol"); got != "chat.v1" {
					t.Errorf("the app was offered protocols %q, want chat.v1 alone", got)
				}
			}

			ws.Send("echo:hi " + source)
			ws.ExpectText(jwtWait, "hi "+source)
			ws.CloseWith(jwtWait, 1000, "")
			WaitCloseEvent(t, e.p, id, jwtWait)
			l := AppLog(t, e.p, id)
			if len(l.Batches) == 0 {
				t.Fatal("no event webhooks")
			}
			for i, b := range l.Batches {
				what := fmt.Sprintf("webhook %d", i+1)
				if b.Body == nil {
					t.Errorf("%s: not JSON: %.200q", what, b.Raw)
					continue
				}
				if !jsonEqual(b.Body.Connection.Claims, claims) {
					t.Errorf("%s: connection.claims %s, want the token's claims", what, b.Body.Connection.Claims)
				}
				if got := b.PathAndQuery(); got != appTarget {
					t.Errorf("%s posted to %q, want the accept's %q", what, got, appTarget)
				}
				noTokenAt(t, what, b, tok, allowed...)
			}
		})
	}
}

// A bearer.* entry alone: nothing is chosen, and the token is never
// echoed as the protocol, even when the app asks for it.
func testHMACBearerProtocolAlone(t *testing.T, e *jwtHMACEnv) {
	claims := jwtClaims("user-protocol-alone")
	tok := e.token(claims)
	ws, resp, id := ConnectWSResp(t, e.c, e.p, "/ws/chat/jwt-protocol-alone", nil, "bearer."+tok)
	if got := ws.Conn.Subprotocol(); got != "" {
		t.Errorf("subprotocol %.40q chosen, want none", got)
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "" {
		t.Errorf("101 Sec-WebSocket-Protocol %.40q, want none", got)
	}
	a := acceptedWithClaims(t, e.p, id, claims)
	if v, ok := a.Header("Sec-WebSocket-Protocol"); ok {
		t.Errorf("the app was offered protocols %.40q; the bearer entry is Cablecar's", v)
	}

	// An app choosing the bearer entry (it never sees it, but may
	// guess) is refused, not echoed. This token is left out of the log
	// check: it travels in the app's own query parameter, which
	// Cablecar does not hide.
	other := signJWT("HS256", "", []byte(e.newSecret), jwtClaims("user-protocol-guess"))
	ws2, resp2, err := DialWS(t, e.c.URL+target("/ws/chat/jwt-protocol-guess", "protocol", "bearer."+other), nil, "bearer."+other)
	if err == nil {
		ws2.Conn.Close()
		t.Errorf("the app chose bearer.<token> and the handshake succeeded with protocol %.40q", ws2.Conn.Subprotocol())
	} else if resp2 != nil {
		if strings.Contains(resp2.Header.Get("Sec-WebSocket-Protocol"), "bearer.") {
			t.Errorf("the refusal echoes the bearer protocol")
		}
		t.Logf("the app choosing bearer.<token>: %d", resp2.StatusCode)
	}
	if strings.Contains(e.c.Logs(), other) {
		t.Logf("note: the token the app chose as its protocol is in Cablecar's log")
	}
}

// The first source present is the one used: Authorization, then the
// query parameter, then the subprotocol. The query parameter is removed
// whichever was used.
func testHMACSourceOrder(t *testing.T, e *jwtHMACEnv) {
	garbage := e.book.add("garbage-" + randomHex(12))

	claims := jwtClaims("user-order-1")
	tok := e.token(claims)
	tag := NewTag(t)
	MustDialWS(t, e.c.URL+target("/ws/chat/jwt-order", "token", garbage, "tag", tag), bearer(tok))
	a := acceptedWithClaims(t, e.p, ConnID(t, e.p, tag), claims)
	if got, want := a.PathAndQuery(), target("/ws/chat/jwt-order", "tag", tag); got != want {
		t.Errorf("header used, query token unused: the app was asked about %q, want %q", got, want)
	}

	path := "/ws/chat/jwt-order-bad-header-" + NewTag(t)
	unauthorized(t, e.c.URL+target(path, "token", e.token(jwtClaims("user-order-2"))), bearer(garbage), garbage)
	if n := e.p.Hits(path); n != 0 {
		t.Errorf("an invalid Authorization with a valid query token reached the app (%d hits)", n)
	}

	// Another scheme in Authorization is the app's business, not a token.
	claims = jwtClaims("user-order-3")
	tok = e.token(claims)
	tag = NewTag(t)
	MustDialWS(t, e.c.URL+target("/ws/chat/jwt-order-basic", "token", tok, "tag", tag),
		http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}})
	acceptedWithClaims(t, e.p, ConnID(t, e.p, tag), claims)

	claims = jwtClaims("user-order-4")
	tok = e.token(claims)
	tag = NewTag(t)
	MustDialWS(t, e.c.URL+target("/ws/chat/jwt-order-proto", "token", tok, "tag", tag), nil, "bearer."+garbage)
	acceptedWithClaims(t, e.p, ConnID(t, e.p, tag), claims)
}

// hmac_secret is a list: a token made with either verifies, one made
// with neither does not.
func testHMACRotation(t *testing.T, e *jwtHMACEnv) {
	claims := jwtClaims("user-old-secret")
	tok := e.book.add(signJWT("HS256", "", []byte(e.oldSecret), claims))
	_, id := ConnectWS(t, e.c, e.p, "/ws/chat/jwt-rotation", bearer(tok))
	acceptedWithClaims(t, e.p, id, claims)

	claims = jwtClaims("user-new-secret")
	tok = e.token(claims)
	_, id = ConnectWS(t, e.c, e.p, "/ws/chat/jwt-rotation", bearer(tok))
	acceptedWithClaims(t, e.p, id, claims)

	// HS384 and HS512 with the same secrets.
	for _, alg := range []string{"HS384", "HS512"} {
		claims = jwtClaims("user-" + alg)
		tok = e.book.add(signJWT(alg, "", []byte(e.oldSecret), claims))
		_, id = ConnectWS(t, e.c, e.p, "/ws/chat/jwt-rotation", bearer(tok))
		acceptedWithClaims(t, e.p, id, claims)
	}

	path := "/ws/chat/jwt-rotation-retired-" + NewTag(t)
	tok = e.book.add(signJWT("HS256", "", []byte("jwt-retired-"+randomHex(16)), jwtClaims("user-retired")))
	unauthorized(t, e.c.URL+path, bearer(tok), tok)
	if n := e.p.Hits(path); n != 0 {
		t.Errorf("the app was asked (%d hits)", n)
	}
}

// No token where one is required: 401 from Cablecar, the app never
// asked. An empty one counts as none.
func testHMACRequiredMissing(t *testing.T, e *jwtHMACEnv) {
	for _, tc := range []struct {
		name      string
		query     []string
		header    http.Header
		protocols []string
	}{
		{name: "nothing"},
		{name: "empty query", query: []string{"token", ""}},
		{name: "empty bearer", header: http.Header{"Authorization": {"Bearer "}}},
		{name: "other scheme", header: http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}},
		{name: "other protocol", protocols: []string{"chat.v1"}},
	} {
		path := "/ws/chat/jwt-missing-" + strings.ReplaceAll(tc.name, " ", "-") + "-" + NewTag(t)
		body := challenged(t, e.c.URL+target(path, tc.query...), tc.header, tc.protocols...)
		t.Logf("%s: %q", tc.name, body)
		if n := e.p.Hits(path); n != 0 {
			t.Errorf("%s: the app was asked (%d hits)", tc.name, n)
		}
	}
}

// Tokens that must be refused, through each source in turn, with a
// reason, and without the app being asked.
func testHMACInvalid(t *testing.T, e *jwtHMACEnv) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	good := jwtClaims("user-invalid")
	valid := signJWT("HS256", "", []byte(e.newSecret), good)
	parts := strings.Split(valid, ".")
	tampered := parts[0] + "." + b64.EncodeToString(must(json.Marshal(with(good, "sub", "admin")))) + "." + parts[2]
	now := time.Now()
	for i, tc := range []struct {
		name, tok string
		keyword   string // the reason should say so (lower case)
	}{
		{"bad signature", signJWT("HS256", "", []byte("not-the-secret"), good), "signature"},
		{"tampered claims", tampered, "signature"},
		{"signature stripped", parts[0] + "." + parts[1] + ".", ""},
		{"expired", signJWT("HS256", "", []byte(e.newSecret), with(good, "exp", now.Add(-5*time.Minute).Unix())), "expired"},
		{"not yet valid", signJWT("HS256", "", []byte(e.newSecret), with(good, "nbf", now.Add(5*time.Minute).Unix())), ""},
		{"alg none", signJWT("none", "", nil, good), ""},
		{"alg None", signJWT("None", "", nil, good), ""},
		{"alg none with a signature", signJWT("none", "", nil, good) + parts[2], ""},
		{"RS256 not configured", signJWT("RS256", "", rsaKey, good), ""},
		{"wrong issuer", signJWT("HS256", "", []byte(e.newSecret), with(good, "iss", "https://evil.example")), "iss"},
		{"no issuer", signJWT("HS256", "", []byte(e.newSecret), with(good, "iss", nil)), "iss"},
		{"wrong audience", signJWT("HS256", "", []byte(e.newSecret), with(good, "aud", "someone-else")), "aud"},
		{"no audience", signJWT("HS256", "", []byte(e.newSecret), with(good, "aud", nil)), "aud"},
		{"not a JWT", "abc.def", ""},
		{"two segments", parts[0] + "." + parts[1], ""},
	} {
		tok := e.book.add(tc.tok)
		path := "/ws/chat/jwt-invalid-" + strings.ReplaceAll(tc.name, " ", "-") + "-" + NewTag(t)
		var (
			header    http.Header
			query     []string
			protocols []string
			source    string
		)
		switch i % 3 {
		case 0:
			header, source = bearer(tok), "header"
		case 1:
			query, source = []string{"token", tok}, "query"
		case 2:
			protocols, source = []string{"bearer." + tok, "chat.v1"}, "protocol"
		}
		reason := unauthorized(t, e.c.URL+target(path, query...), header, tok, protocols...)
		t.Logf("%s (%s): %q", tc.name, source, reason)
		if tc.keyword != "" && !strings.Contains(strings.ToLower(reason), tc.keyword) {
			t.Errorf("%s: reason %q does not say %q", tc.name, reason, tc.keyword)
		}
		if n := e.p.Hits(path); n != 0 {
			t.Errorf("%s: the app was asked (%d hits)", tc.name, n)
		}
	}
	// A token valid in every other way but for another audience in a
	// list: one of the list must match.
	claims := with(good, "aud", []any{"someone-else", jwtAudience}, "jti", randomHex(8))
	tok := e.token(claims)
	_, id := ConnectWS(t, e.c, e.p, "/ws/chat/jwt-aud-list", bearer(tok))
	acceptedWithClaims(t, e.p, id, claims)
}

// leeway (5s here) forgives clock skew on nbf and exp.
func testHMACLeeway(t *testing.T, e *jwtHMACEnv) {
	now := time.Now()
	claims := with(jwtClaims("user-nbf-skew"), "nbf", now.Add(3*time.Second).Unix())
	_, id := ConnectWS(t, e.c, e.p, "/ws/chat/jwt-leeway", bearer(e.token(claims)))
	acceptedWithClaims(t, e.p, id, claims)

	claims = with(jwtClaims("user-exp-skew"), "exp", now.Add(-3*time.Second).Unix())
	ws, id := ConnectWS(t, e.c, e.p, "/ws/chat/jwt-leeway", bearer(e.token(claims)))
	acceptedWithClaims(t, e.p, id, claims)
	// Not in the contract either way: shown for whoever reads the run.
	start := time.Now()
	code, reason, err := ws.ReadClose(2 * time.Second)
	t.Logf("a token 3s past exp, accepted within leeway: then closed %d %q after %s (err %v)",
		code, reason, time.Since(start).Round(time.Millisecond), err)
}

// An open connection is closed 1008 (by: expired) once exp + leeway
// passes, seen by the heartbeat tick (500ms here).
func testHMACExpiry(t *testing.T, e *jwtHMACEnv) {
	exp := time.Now().Add(2 * time.Second).Unix()
	expAt := time.Unix(exp, 0).Add(jwtLeeway)
	claims := with(jwtClaims("user-expiring"), "exp", exp)
	ws, id := ConnectWS(t, e.c, e.p, target("/ws/chat/jwt-expiry", "first", "welcome"), bearer(e.token(claims)))
	ws.ExpectText(jwtWait, "welcome")
	code, reason := ws.ExpectClose(time.Until(expAt) + 5*time.Second)
	closedAt := time.Now()
	t.Logf("closed %d %q, %s after exp", code, reason, closedAt.Sub(expAt).Round(time.Millisecond))
	if code != 1008 {
		t.Errorf("closed with %d %q, want 1008", code, reason)
	}
	if closedAt.Before(expAt.Add(-100 * time.Millisecond)) {
		t.Errorf("closed %s before exp", expAt.Sub(closedAt))
	}
	if late := closedAt.Sub(expAt); late > 2*time.Second {
		t.Errorf("closed %s after exp; the heartbeat ticks every 500ms", late)
	}
	ev := WaitCloseEvent(t, e.p, id, jwtWait)
	if ev.By != "expired" || ev.Code != 1008 {
		t.Errorf("close event %v, want 1008 by expired", ev)
	}
	l := AppLog(t, e.p, id)
	for i, b := range l.Batches {
		if b.Body != nil && !jsonEqual(b.Body.Connection.Claims, claims) {
			t.Errorf("webhook %d: connection.claims %s, want the token's claims", i+1, b.Body.Connection.Claims)
		}
	}
}

// A token as Devise-JWT (warden-jwt_auth) makes them: HS256, sub a
// string, scp, aud null unless the client sent JWT_AUD at sign-in, jti.
// It verifies on a Cablecar with no issuer or audience set, which is
// what docs/auth.md tells Devise-JWT users to run.
func testHMACDeviseShaped(t *testing.T, e *jwtHMACEnv) {
	now := time.Now()
	claims := map[string]any{
		"sub": "1", "scp": "user", "aud": nil,
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "jti": randomHex(16),
	}
	_, id := ConnectWS(t, e.opt, e.p, "/ws/chat/jwt-devise", bearer(e.token(claims)))
	acceptedWithClaims(t, e.p, id, claims)

	// SPEC §6: a numeric sub (`sub: user.id`, Rails' habit) is
	// accepted, and reaches the app as the number it was.
	numeric := with(claims, "sub", 42, "jti", randomHex(16))
	_, id = ConnectWS(t, e.opt, e.p, "/ws/chat/jwt-devise-numeric-sub", bearer(e.token(numeric)))
	acceptedWithClaims(t, e.p, id, numeric)
}

// Plain HTTP with the query parameter is proxied as it is (it is not a
// handshake), but the token does not reach the access log.
func testHMACPlainHTTPQueryNotLogged(t *testing.T, e *jwtHMACEnv) {
	tok := e.token(jwtClaims("user-plain-http"))
	code, body, err := get(newClient(t), e.c.URL+"/hello?token="+tok, jwtWait)
	if err != nil || code != 200 || body != "hello world\n" {
		t.Fatalf("plain GET with ?token=: %d %q %v", code, body, err)
	}
}

// Not required: no token passes without claims (and a client cannot
// forge them); an invalid token is still refused; the token comes in
// access_token here, and a parameter called token is the app's own.
func testHMACOptional(t *testing.T, e *jwtHMACEnv) {
	tag := NewTag(t)
	ws, _ := MustDialWS(t, e.opt.URL+target("/ws/chat/jwt-optional", "tag", tag),
		http.Header{"Cablecar-Claims": {`{"sub":"admin"}`}})
	id := ConnID(t, e.p, tag)
	ws.Send("echo:anonymous")
	ws.ExpectText(jwtWait, "anonymous")
	l := AppLog(t, e.p, id)
	if v, ok := l.Accepts[0].Header("Cablecar-Claims"); ok {
		t.Errorf("accept without a token has Cablecar-Claims %q", v)
	}
	for i, b := range l.Batches {
		if b.Body != nil && len(b.Body.Connection.Claims) > 0 && string(b.Body.Connection.Claims) != "null" {
			t.Errorf("webhook %d without a token: connection.claims %s", i+1, b.Body.Connection.Claims)
		}
	}

	claims := jwtClaims("user-optional")
	tok := e.token(claims)
	tag = NewTag(t)
	MustDialWS(t, e.opt.URL+target("/ws/chat/jwt-optional", "token", "the-apps-own", "access_token", tok, "tag", tag), nil)
	a := acceptedWithClaims(t, e.p, ConnID(t, e.p, tag), claims)
	if got, want := a.PathAndQuery(), target("/ws/chat/jwt-optional", "token", "the-apps-own", "tag", tag); got != want {
		t.Errorf("the app was asked about %q, want %q", got, want)
	}

	for _, bad := range []string{
		signJWT("HS256", "", []byte("not-the-secret"), jwtClaims("user-optional-bad")),
		signJWT("HS256", "", []byte(e.newSecret), with(jwtClaims("user-optional-old"), "exp", time.Now().Add(-time.Hour).Unix())),
		signJWT("none", "", nil, jwtClaims("user-optional-none")),
	} {
		tok := e.book.add(bad)
		path := "/ws/chat/jwt-optional-invalid-" + NewTag(t)
		unauthorized(t, e.opt.URL+target(path, "access_token", tok), nil, tok)
		if n := e.p.Hits(path); n != 0 {
			t.Errorf("an invalid token on an optional Cablecar reached the app (%d hits)", n)
		}
	}

	code, body, err := get(newClient(t), e.opt.URL+"/hello?access_token="+e.token(claims), jwtWait)
	if err != nil || code != 200 || body != "hello world\n" {
		t.Fatalf("plain GET with ?access_token=: %d %q %v", code, body, err)
	}
}
