package auth

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// heldJWKS is a key set endpoint whose answers wait until release is
// called: the first key set has not arrived for as long as the test says.
func heldJWKS(t *testing.T, keys ...testJWK) (srv *jwksServer, release func()) {
	srv = newJWKSServer(t, keys...)
	gate := make(chan struct{})
	srv.mu.Lock()
	srv.gate = gate
	srv.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release) // before the server closes: cleanups run last first
	return srv, release
}

// refreshOnce fetches the key set once, as the background refresh does.
func refreshOnce(j *jwks) {
	opts := j.options()
	opts.RefreshInterval = 0
	_, _ = jwkset.NewStorageFromHTTP(j.url, opts)
}

// TestJWKSFirstKeysAreWaitedFor: a token that comes before the first key
// set arrived waits for it, and verifies once it arrives (SPEC §6).
func TestJWKSFirstKeysAreWaitedFor(t *testing.T) {
	srv, release := heldJWKS(t, standardKeys()...)
	v := jwksVerifier(t, JWTConfig{JWKSURL: srv.URL, Issuer: testIssuer, Audience: testAudience}, zerolog.Nop(), nil,
		func(j *jwks) { j.firstWait = time.Minute })
	waitFor(t, "the first fetch to be asked", func() bool { return srv.fetches.Load() == 1 })

	tok := sign(t, jwt.SigningMethodRS256, keys().rsa, "rsa-1", claims())
	done := make(chan error, 1)
	go func() {
		_, err := v.Verify(tok)
		done <- err
	}()
	waitFor(t, "the handshake to wait for the keys", func() bool { return v.jwks.waiting.Load() == 1 })
	select {
	case err := <-done:
		t.Fatalf("Verify returned before the keys arrived: %v", err)
	default:
	}
	release()
	if err := <-done; err != nil {
		t.Fatalf("Verify once the first keys arrived: %v", err)
	}
	if n := v.jwks.waiting.Load(); n != 0 {
		t.Errorf("%d still waiting", n)
	}
}

// TestJWKSFirstKeysWaitIsBounded: past the wait, the token is refused for
// want of keys (upgrade answers that 503, never 401).
func TestJWKSFirstKeysWaitIsBounded(t *testing.T) {
	srv, _ := heldJWKS(t, standardKeys()...)
	v := jwksVerifier(t, JWTConfig{JWKSURL: srv.URL, HMACSecrets: []string{testSecret}}, zerolog.Nop(), nil,
		func(j *jwks) { j.firstWait = 200 * time.Millisecond })
	tok := sign(t, jwt.SigningMethodES256, keys().ec256, "", claims())
	start := time.Now()
	_, err := v.Verify(tok)
	wantRefused(t, err, ReasonNoKeys, tok)
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("refused after %v, before the wait was over", d)
	}
}

// TestJWKSFirstKeysNotNeeded: HS* and malformed tokens never wait for the
// key set: were they to, the wait of an hour would hold this test up.
func TestJWKSFirstKeysNotNeeded(t *testing.T) {
	srv, _ := heldJWKS(t, standardKeys()...)
	v := jwksVerifier(t, JWTConfig{JWKSURL: srv.URL, HMACSecrets: []string{testSecret}}, zerolog.Nop(), prometheus.NewRegistry(),
		func(j *jwks) { j.firstWait = time.Hour })
	if _, err := v.Verify(hs256(t, testSecret, claims())); err != nil {
		t.Errorf("an HS256 token while the key set is held: %v", err)
	}
	_, err := v.Verify("not.a.token")
	wantRefused(t, err, ReasonMalformed, "")
	if n := v.jwks.waiting.Load(); n != 0 {
		t.Errorf("%d waiting for keys they do not need", n)
	}
}

// TestJWKSStatus: what /readyz says of the key set, before, without and
// with keys, and after a failed refresh.
func TestJWKSStatus(t *testing.T) {
	if s, ok := (*Verifier)(nil).JWKSStatus(); ok || s != (JWKSStatus{}) {
		t.Errorf("JWT off: %+v, %v", s, ok)
	}
	if _, ok := hmacVerifier(t, JWTConfig{HMACSecrets: []string{testSecret}}).JWKSStatus(); ok {
		t.Error("HMAC only: a key set status")
	}

	srv, release := heldJWKS(t, standardKeys()...)
	srv.answer(http.StatusBadGateway, []byte("upstream down"))
	v := jwksVerifier(t, JWTConfig{JWKSURL: srv.URL + "/jwks"}, zerolog.Nop(), nil)
	s, ok := v.JWKSStatus()
	if !ok || s.Arrived || s.Err != nil || s.URL != srv.URL+"/jwks" {
		t.Errorf("first fetch in progress: %+v, %v; want not arrived, no error yet", s, ok)
	}
	release()
	waitFor(t, "a failed fetch", func() bool { s, _ := v.JWKSStatus(); return s.Err != nil })
	s, _ = v.JWKSStatus()
	if s.Arrived || !strings.Contains(s.Err.Error(), "502") {
		t.Errorf("endpoint failing: %+v; want not arrived, the 502", s)
	}

	srv.serve(t, standardKeys()...)
	waitFor(t, "the keys", func() bool { s, _ := v.JWKSStatus(); return s.Arrived })
	s, _ = v.JWKSStatus()
	if s.Err != nil || s.Keys != len(standardKeys()) {
		t.Errorf("keys loaded: %+v; want no error, %d keys", s, len(standardKeys()))
	}
	// A refresh that fails keeps the keys: still arrived, and says why.
	srv.answer(http.StatusInternalServerError, nil)
	refreshOnce(v.jwks)
	s, _ = v.JWKSStatus()
	if !s.Arrived || s.Err == nil || s.Keys != len(standardKeys()) {
		t.Errorf("after a failed refresh: %+v; want arrived, its error, the keys kept", s)
	}
	if err := v.Ready(t.Context()); err != nil {
		t.Errorf("Ready after a failed refresh with keys kept: %v", err)
	}
}
