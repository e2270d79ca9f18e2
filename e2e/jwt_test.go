package e2e

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "crypto/sha256" // the hashes the tokens are signed with
	_ "crypto/sha512"
)

// JWT at the handshake (SPEC §6), against the real binary: a token is
// verified before the app is asked, its claims reach the app, refusals never
// reach it, and no token or key ever reaches a log line.
//
// The tokens are made here by hand from the standard library, not with the
// JWT library Cablecar uses, so the test is an independent reading of
// RFC 7515/7519 rather than the library agreeing with itself.
//
// Each test is a named function: the HMAC group's are listed in
// jwtHMACTests, testHMAC<name> for TestJWT/HMAC/cases/<name>; the JWKS and
// JWKSDownAtStart groups are one function each (testJWTJWKS,
// testJWTJWKSDownAtStart). Run one, or a group, with
//
//	go test -race -count=1 -run 'TestJWT/HMAC/cases/Expiry$' ./e2e/
//	go test -race -count=1 -run 'TestJWT/JWKS' ./e2e/

const (
	jwtIssuer   = "https://issuer.cablecar.test"
	jwtAudience = "cablecar-e2e"
	// jwtWait bounds what should happen at once.
	jwtWait = 5 * time.Second
)

// TestJWT runs the three groups in parallel in front of one shared Puma:
// HMAC secrets, a JWKS served by the test, and a JWKS that is down when
// Cablecar starts.
func TestJWT(t *testing.T) {
	t.Parallel()
	p := StartPuma(t, PumaOptions{})
	t.Run("HMAC", func(t *testing.T) {
		t.Parallel()
		testJWTHMAC(t, p)
	})
	t.Run("JWKS", func(t *testing.T) {
		t.Parallel()
		testJWTJWKS(t, p)
	})
	t.Run("JWKSDownAtStart", func(t *testing.T) {
		t.Parallel()
		testJWTJWKSDownAtStart(t, p)
	})
}

// --- making tokens ------------------------------------------------------------

var b64 = base64.RawURLEncoding

// signJWT is a compact JWS of claims with alg and kid (none when ""), signed
// with key: []byte for HS*, *rsa.PrivateKey for RS*/PS*, *ecdsa.PrivateKey
// for ES256, ed25519.PrivateKey for EdDSA, nothing for "none" (any alg not
// listed gets an empty signature).
func signJWT(alg, kid string, key any, claims map[string]any) string {
	header := map[string]any{"alg": alg, "typ": "JWT"}
	if kid != "" {
		header["kid"] = kid
	}
	h, err := json.Marshal(header)
	if err != nil {
		panic(err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		panic(err)
	}
	input := b64.EncodeToString(h) + "." + b64.EncodeToString(c)
	return input + "." + b64.EncodeToString(jwsSign(alg, key, []byte(input)))
}

func jwsSign(alg string, key any, input []byte) []byte {
	hashes := map[string]crypto.Hash{"256": crypto.SHA256, "384": crypto.SHA384, "512": crypto.SHA512}
	var hash crypto.Hash
	if len(alg) == 5 {
		hash = hashes[alg[2:]]
	}
	digest := func() []byte {
		h := hash.New()
		h.Write(input)
		return h.Sum(nil)
	}
	var (
		sig []byte
		err error
	)
	switch {
	case alg == "EdDSA":
		sig = ed25519.Sign(key.(ed25519.PrivateKey), input)
	case hash == 0:
		// "none" and anything unknown: no signature.
	case strings.HasPrefix(alg, "HS"):
		mac := hmac.New(hash.New, key.([]byte))
		mac.Write(input)
		sig = mac.Sum(nil)
	case strings.HasPrefix(alg, "RS"):
		sig, err = rsa.SignPKCS1v15(rand.Reader, key.(*rsa.PrivateKey), hash, digest())
	case strings.HasPrefix(alg, "PS"):
		sig, err = rsa.SignPSS(rand.Reader, key.(*rsa.PrivateKey), hash, digest(), &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	case alg == "ES256":
		var r, s *big.Int
		r, s, err = ecdsa.Sign(rand.Reader, key.(*ecdsa.PrivateKey), digest())
		if err == nil {
			// JWS wants r and s as two fixed 32-byte halves, not ASN.1.
			sig = make([]byte, 64)
			r.FillBytes(sig[:32])
			s.FillBytes(sig[32:])
		}
	default:
		panic("jwsSign: no signer for " + alg)
	}
	if err != nil {
		panic(err)
	}
	return sig
}

// jwtClaims are the claims of a token for sub that Cablecar, as configured
// here, accepts: issuer and audience right, ten minutes to live, and a few
// claims of other JSON types that must reach the app unchanged.
func jwtClaims(sub string) map[string]any {
	now := time.Now()
	return map[string]any{
		"sub":   sub,
		"iss":   jwtIssuer,
		"aud":   jwtAudience,
		"iat":   now.Unix(),
		"exp":   now.Add(10 * time.Minute).Unix(),
		"jti":   randomHex(8),
		"roles": []any{"reader", "writer"},
		"org":   map[string]any{"id": 42, "plan": "pro"},
	}
}

// with is claims with the changes made; a nil value removes the claim.
func with(claims map[string]any, kv ...any) map[string]any {
	out := map[string]any{}
	for k, v := range claims {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// secretBook is every token and secret a group used, so that at the end it
// can check that none of them reached a log line.
type secretBook struct {
	mu  sync.Mutex
	all []string
}

// add records s and returns it.
func (b *secretBook) add(s string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.all = append(b.all, s)
	return s
}

// checkLogs fails for each recorded secret found in what any of cs wrote.
// For a token it also looks for its signature alone, which is what makes it
// usable; the claims segment is not secret by itself.
func (b *secretBook) checkLogs(t *testing.T, cs ...*Cablecar) {
	t.Helper()
	b.mu.Lock()
	secrets := append([]string(nil), b.all...)
	b.mu.Unlock()
	if len(secrets) == 0 {
		t.Fatal("no tokens recorded: the log check would prove nothing")
	}
	for _, c := range cs {
		logs := c.Logs() + c.Stdout()
		if !strings.Contains(logs, "\n") {
			t.Fatalf("cablecar %s wrote no logs at all: the log check would prove nothing", c.Addr)
		}
		leaked := 0
		for _, s := range secrets {
			needles := []string{s}
			if parts := strings.Split(s, "."); len(parts) == 3 && len(parts[2]) >= 16 {
				needles = append(needles, parts[2])
			}
			for _, n := range needles {
				if i := strings.Index(logs, n); i >= 0 {
					leaked++
					start := strings.LastIndexByte(logs[:i], '\n') + 1
					end := i + strings.IndexByte(logs[i:]+"\n", '\n')
					t.Errorf("cablecar %s logged a token or secret (%.12s…) in: %.400s", c.Addr, n, logs[start:end])
					break
				}
			}
		}
		t.Logf("cablecar %s: %d log bytes checked for %d tokens and secrets, %d found", c.Addr, len(logs), len(secrets), leaked)
	}
}

// --- checking what the app saw --------------------------------------------------

// jsonEqual reports whether got (JSON) holds the same value as want.
func jsonEqual(got []byte, want any) bool {
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		return false
	}
	wb, err := json.Marshal(want)
	if err != nil {
		return false
	}
	if err := json.Unmarshal(wb, &w); err != nil {
		return false
	}
	return reflect.DeepEqual(g, w)
}

// acceptedWithClaims fetches what the app recorded for connection id and
// fails unless its one accept request carried Cablecar-Claims equal to want.
func acceptedWithClaims(t *testing.T, p *Puma, id string, want map[string]any) WSAppRequest {
	t.Helper()
	l := AppLog(t, p, id)
	if len(l.Accepts) != 1 {
		t.Fatalf("the app got %d accept requests for %s, want 1", len(l.Accepts), id)
	}
	a := l.Accepts[0]
	got, ok := a.Header("Cablecar-Claims")
	if !ok {
		t.Fatalf("accept request for %s has no Cablecar-Claims; headers %v", id, a.Headers)
	}
	if !jsonEqual([]byte(got), want) {
		wb, _ := json.Marshal(want)
		t.Errorf("accept request Cablecar-Claims %s, want the token's claims %s", got, wb)
	}
	return a
}

// noTokenAt fails if tok appears anywhere in what the app received for
// this request, except in the headers named in allowed.
func noTokenAt(t *testing.T, what string, r WSAppRequest, tok string, allowed ...string) {
	t.Helper()
	if strings.Contains(r.PathAndQuery(), tok) {
		t.Errorf("%s: the app saw the token in %q", what, r.PathAndQuery())
	}
	for name, v := range r.Headers {
		if !strings.Contains(v, tok) {
			continue
		}
		ok := false
		for _, a := range allowed {
			if strings.EqualFold(name, a) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s: the app saw the token in header %s", what, name)
		}
	}
	if strings.Contains(r.Raw, tok) {
		t.Errorf("%s: the app saw the token in the body", what)
	}
}

// unauthorized dials and fails unless Cablecar refuses with the 401 the
// contract describes: WWW-Authenticate with error="invalid_token" and an
// error_description, and a short body, neither holding tok. It returns the
// description.
func unauthorized(t *testing.T, rawURL string, header http.Header, tok string, protocols ...string) string {
	t.Helper()
	start := time.Now()
	resp, body := refused(t, rawURL, header, protocols...)
	elapsed := time.Since(start)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d %q, want 401", resp.StatusCode, body)
	}
	if elapsed > 3*time.Second {
		t.Errorf("the 401 took %s", elapsed)
	}
	wa := resp.Header.Get("WWW-Authenticate")
	const prefix = `Bearer error="invalid_token", error_description="`
	reason, ok := strings.CutPrefix(wa, prefix)
	if ok {
		reason, ok = strings.CutSuffix(reason, `"`)
	}
	if !ok || reason == "" {
		t.Errorf("WWW-Authenticate %q, want %s<reason>\"", wa, prefix)
	}
	if body == "" || len(body) > 512 {
		t.Errorf("401 body %q: want a short one", body)
	}
	if tok != "" {
		for name, vs := range resp.Header {
			for _, v := range vs {
				if strings.Contains(v, tok) {
					t.Errorf("the 401 echoes the token in %s", name)
				}
			}
		}
		if strings.Contains(body, tok) {
			t.Errorf("the 401 body echoes the token")
		}
	}
	return reason
}

func bearer(tok string) http.Header {
	return http.Header{"Authorization": {"Bearer " + tok}}
}

// --- HMAC -------------------------------------------------------------------------

// jwtHMACEnv is a group of tests sharing one Puma and two Cablecars:
// c requires a token (two secrets, for rotation; issuer and audience set;
// a heartbeat tick of 500ms so expiry is seen fast; signed callbacks), opt
// does not, and takes its token in access_token instead of token.
// jwtLeeway is the HMAC group's auth.jwt.leeway: short, so that expiry
// (at exp + leeway) is seen quickly.
const jwtLeeway = 5 * time.Second

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

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// --- JWKS -------------------------------------------------------------------------

// jwksServer serves a JWK Set the test can swap, and counts the fetches.
type jwksServer struct {
	set     atomic.Pointer[[]byte]
	fetches atomic.Int64
}

func (s *jwksServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.fetches.Add(1)
	w.Header().Set("Content-Type", "application/json")
	w.Write(*s.set.Load())
}

// serve makes keys the set served from now on.
func (s *jwksServer) serve(keys ...map[string]any) {
	b := must(json.Marshal(map[string]any{"keys": keys}))
	s.set.Store(&b)
}

// signingKey is a private key with its kid and alg, and its public JWK.
type signingKey struct {
	kid, alg string
	private  any
	jwk      map[string]any
}

func (k signingKey) sign(claims map[string]any) string {
	return signJWT(k.alg, k.kid, k.private, claims)
}

func newRSAKey(t *testing.T, kid, alg string) signingKey {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{kid: kid, alg: alg, private: key, jwk: map[string]any{
		"kty": "RSA", "kid": kid, "alg": alg, "use": "sig",
		"n": b64.EncodeToString(key.N.Bytes()),
		"e": b64.EncodeToString(big.NewInt(int64(key.E)).Bytes()),
	}}
}

func newECKey(t *testing.T, kid string) signingKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	point, err := key.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{kid: kid, alg: "ES256", private: key, jwk: map[string]any{
		"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
		"x": b64.EncodeToString(point[1:33]),
		"y": b64.EncodeToString(point[33:]),
	}}
}

func newEdKey(t *testing.T, kid string) signingKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signingKey{kid: kid, alg: "EdDSA", private: priv, jwk: map[string]any{
		"kty": "OKP", "kid": kid, "alg": "EdDSA", "use": "sig", "crv": "Ed25519",
		"x": b64.EncodeToString(pub),
	}}
}

// dialTimed dials and reports whether the handshake got 101 and how long
// it took.
func dialTimed(t *testing.T, rawURL string, header http.Header) (bool, time.Duration) {
	t.Helper()
	start := time.Now()
	ws, _, err := DialWS(t, rawURL, header)
	if err == nil {
		ws.Conn.Close()
	}
	return err == nil, time.Since(start)
}

func testJWTJWKS(t *testing.T, p *Puma) {
	book := &secretBook{}
	rsa1 := newRSAKey(t, "rsa-1", "RS256")
	pss := newRSAKey(t, "pss-1", "PS256")
	ec := newECKey(t, "ec-1")
	ed := newEdKey(t, "ed-1")
	jwks := &jwksServer{}
	jwks.serve(rsa1.jwk, pss.jwk, ec.jwk, ed.jwk)
	srv := httptest.NewServer(jwks)
	t.Cleanup(srv.Close)

	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{
		"auth.jwt.required": true,
		"auth.jwt.jwks_url": srv.URL + "/.well-known/jwks.json",
		"auth.jwt.issuer":   jwtIssuer,
		"auth.jwt.audience": jwtAudience,
	}})
	WaitFor(t, 10*time.Second, "/readyz 200 with the JWKS up", func() bool { return c.AdminStatus("/readyz") == 200 })

	for _, k := range []signingKey{rsa1, pss, ec, ed} {
		claims := jwtClaims("user-" + k.alg)
		_, id := ConnectWS(t, c, p, "/ws/chat/jwks-"+k.alg, bearer(book.add(k.sign(claims))))
		acceptedWithClaims(t, p, id, claims)
	}

	// Refusals, all naming a kid the set has, so that none of them spends
	// the refresh that an unknown kid may trigger.
	pubDER := must(x509.MarshalPKIXPublicKey(&rsa1.private.(*rsa.PrivateKey).PublicKey))
	good := jwtClaims("user-jwks-invalid")
	stranger := newRSAKey(t, "rsa-1", "RS256") // right kid, wrong key
	for _, tc := range []struct{ name, tok string }{
		{"alg none", signJWT("none", "rsa-1", nil, good)},
		{"HS256 keyed with the RSA public key", signJWT("HS256", "rsa-1", pubDER, good)},
		{"HS256 with some secret", signJWT("HS256", "rsa-1", []byte("guess"), good)},
		{"signed by another key", stranger.sign(good)},
		{"RS256 under the PS256 key", signJWT("RS256", "pss-1", pss.private, good)},
		{"expired", rsa1.sign(with(good, "exp", time.Now().Add(-5*time.Minute).Unix()))},
		{"wrong audience", rsa1.sign(with(good, "aud", "someone-else"))},
	} {
		tok := book.add(tc.tok)
		path := "/ws/chat/jwks-invalid-" + strings.ReplaceAll(tc.name, " ", "-") + "-" + NewTag(t)
		reason := unauthorized(t, c.URL+path, bearer(tok), tok)
		t.Logf("%s: %q", tc.name, reason)
		if n := p.Hits(path); n != 0 {
			t.Errorf("%s: the app was asked (%d hits)", tc.name, n)
		}
	}

	// The issuer rotates: rsa-1 is gone, rsa-2 is new. A token signed by
	// rsa-2 is accepted without restarting Cablecar.
	rsa2 := newRSAKey(t, "rsa-2", "RS256")
	jwks.serve(rsa2.jwk, pss.jwk, ec.jwk, ed.jwk)
	before := jwks.fetches.Load()
	claims := jwtClaims("user-rotated")
	tok := book.add(rsa2.sign(claims))
	tag := NewTag(t)
	rotated := c.URL + target("/ws/chat/jwks-rotated", "tag", tag)
	start := time.Now()
	attempts := 0
	var first time.Duration
	WaitFor(t, 20*time.Second, "a token signed by the new key to be accepted", func() bool {
		attempts++
		ok, took := dialTimed(t, rotated, bearer(tok))
		if attempts == 1 {
			first = took
		}
		return ok
	})
	t.Logf("new kid accepted after %s, %d attempt(s) (the first took %s), %d JWKS fetch(es) since the rotation",
		time.Since(start).Round(time.Millisecond), attempts, first.Round(time.Millisecond), jwks.fetches.Load()-before)
	if attempts > 1 {
		t.Errorf("the first token with the new kid was refused: an unknown kid should refresh the keys at once")
	}
	acceptedWithClaims(t, p, ConnID(t, p, tag), claims)

	// The retired key no longer verifies.
	path := "/ws/chat/jwks-retired-" + NewTag(t)
	tok = book.add(rsa1.sign(jwtClaims("user-retired-key")))
	unauthorized(t, c.URL+path, bearer(tok), tok)
	if n := p.Hits(path); n != 0 {
		t.Errorf("a token of the retired key reached the app (%d hits)", n)
	}

	// Unknown kids do not make Cablecar fetch the set each time, nor keep
	// the handshake waiting.
	before = jwks.fetches.Load()
	for i := range 5 {
		tok := book.add(signJWT("RS256", fmt.Sprintf("ghost-%d", i), rsa2.private, jwtClaims("user-ghost")))
		path := "/ws/chat/jwks-ghost-" + NewTag(t)
		unauthorized(t, c.URL+path, bearer(tok), tok) // fails past 3s
		if n := p.Hits(path); n != 0 {
			t.Errorf("a token with an unknown kid reached the app (%d hits)", n)
		}
	}
	if n := jwks.fetches.Load() - before; n > 1 {
		t.Errorf("5 tokens with unknown kids made %d JWKS fetches; refreshes should be rate-limited", n)
	} else {
		t.Logf("5 tokens with unknown kids: %d JWKS fetch(es)", n)
	}

	book.checkLogs(t, c)
}

// The JWKS is down when Cablecar starts: it starts anyway, is not ready,
// refuses tokens, and becomes ready and accepts them once the set can be
// fetched.
func testJWTJWKSDownAtStart(t *testing.T, p *Puma) {
	book := &secretBook{}
	key := newRSAKey(t, "late-1", "RS256")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{
		"auth.jwt.required": true,
		"auth.jwt.jwks_url": "http://" + addr + "/jwks.json",
		"auth.jwt.issuer":   jwtIssuer,
		"auth.jwt.audience": jwtAudience,
	}})
	code, body := c.Admin("/readyz")
	t.Logf("/readyz with the JWKS down: %d %q", code, body)
	if code != 503 || !strings.Contains(body, "jwks: ") {
		t.Errorf("/readyz with the JWKS down: %d %q, want 503 saying jwks: …", code, body)
	}
	// A token while there are no keys waits for them, then gets 503 (SPEC
	// §6); the three sources wait side by side.
	t.Run("refused", func(t *testing.T) {
		for _, source := range []string{"header", "query", "protocol"} {
			t.Run(source, func(t *testing.T) {
				t.Parallel()
				path := "/ws/chat/jwks-late-refused-" + NewTag(t)
				tok := book.add(key.sign(jwtClaims("user-too-early")))
				switch source {
				case "header":
					keysNotYet(t, c.URL+path, bearer(tok), tok)
				case "query":
					keysNotYet(t, c.URL+target(path, "token", tok), nil, tok)
				case "protocol":
					keysNotYet(t, c.URL+path, nil, tok, "bearer."+tok, "chat.v1")
				}
				if n := p.Hits(path); n != 0 {
					t.Errorf("a token refused for want of keys reached the app (%d hits)", n)
				}
			})
		}
	})

	jwks := &jwksServer{}
	jwks.serve(key.jwk)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening for the JWKS on %s: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(jwks)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)

	start := time.Now()
	WaitFor(t, 30*time.Second, "/readyz 200 once the JWKS is up", func() bool { return c.AdminStatus("/readyz") == 200 })
	t.Logf("ready %s after the JWKS came up (%d fetches)", time.Since(start).Round(time.Millisecond), jwks.fetches.Load())

	for _, source := range []string{"header", "query", "protocol"} {
		claims := jwtClaims("user-late-" + source)
		tok := book.add(key.sign(claims))
		var id string
		switch source {
		case "header":
			_, id = ConnectWS(t, c, p, "/ws/chat/jwks-late", bearer(tok))
		case "query":
			_, id = ConnectWS(t, c, p, target("/ws/chat/jwks-late", "token", tok), nil)
		case "protocol":
			_, id = ConnectWS(t, c, p, target("/ws/chat/jwks-late", "protocol", "chat.v1"), nil, "bearer."+tok, "chat.v1")
		}
		noTokenAt(t, source, acceptedWithClaims(t, p, id, claims), tok, "Authorization")
	}

	book.checkLogs(t, c)
}
