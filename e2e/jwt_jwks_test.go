package e2e

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestJWT/JWKS and TestJWT/JWKSDownAtStart: tokens signed with RSA, EC and
// Ed25519 keys that Cablecar fetches from a JWK Set served by the test (see
// jwt_test.go for how to run them).

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
