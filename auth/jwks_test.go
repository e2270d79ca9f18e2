package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/internal/testsupport"
)

// jwksServer serves a JWK Set on 127.0.0.1 and counts the fetches; the
// set, or a failure, can change while it runs.
type jwksServer struct {
	*httptest.Server
	fetches atomic.Int64
	mu      sync.Mutex
	status  int
	body    []byte
	gate    chan struct{} // when set, answers wait until it is closed
}

type testJWK struct {
	kid, alg, use string
	pub           crypto.PublicKey
}

func newJWKSServer(t testing.TB, keys ...testJWK) *jwksServer {
	s := &jwksServer{}
	s.serve(t, keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		gate := s.gate
		s.mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		s.mu.Lock()
		status, body := s.status, s.body
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

// serve makes the server answer with these keys from now on.
func (s *jwksServer) serve(t testing.TB, keys ...testJWK) {
	t.Helper()
	set := jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{}}
	for _, k := range keys {
		jwk, err := jwkset.NewJWKFromKey(k.pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{
			KID: k.kid, ALG: jwkset.ALG(k.alg), USE: jwkset.USE(k.use),
		}})
		if err != nil {
			t.Fatalf("JWK %s: %v", k.kid, err)
		}
		set.Keys = append(set.Keys, jwk.Marshal())
	}
	body, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	s.answer(http.StatusOK, body)
}

func (s *jwksServer) answer(status int, body []byte) {
	s.mu.Lock()
	s.status, s.body = status, body
	s.mu.Unlock()
}

// fastJWKS shortens the retry timings and the wait for the first key set;
// the unknown-kid limit keeps its production value, which the tests rely on.
func fastJWKS(j *jwks) {
	j.retryMin = 10 * time.Millisecond
	j.retryMax = 100 * time.Millisecond
	j.fetchTimeout = 2 * time.Second
	j.firstWait = 10 * time.Millisecond
}

func jwksVerifier(t *testing.T, cfg JWTConfig, log zerolog.Logger, reg prometheus.Registerer, tune ...func(*jwks)) *Verifier {
	t.Helper()
	v, err := newVerifier(cfg, log, reg, func(j *jwks) {
		fastJWKS(j)
		for _, f := range tune {
			f(j)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	v.now = func() time.Time { return jwtNow }
	t.Cleanup(func() {
		v.Close()
		noJWKSGoroutines(t)
	})
	return v
}

// waitFor polls cond until it holds, failing the test after a deadline.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testsupport.Eventually(t, what, 5*time.Second, cond)
}

func waitReady(t *testing.T, v *Verifier) {
	t.Helper()
	waitFor(t, "the verifier to be ready", func() bool { return v.Ready(t.Context()) == nil })
}

// noJWKSGoroutines checks that Close ended the fetching: ours and jwkset's.
func noJWKSGoroutines(t *testing.T) {
	t.Helper()
	waitFor(t, "the key set goroutines to end", func() bool {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		return !strings.Contains(stacks, "jwkset.NewStorageFromHTTP") && !strings.Contains(stacks, "auth.(*jwks)")
	})
}

func standardKeys() []testJWK {
	k := keys()
	return []testJWK{
		{kid: "rsa-1", pub: k.rsa.Public()}, // no alg: any RS* or PS*
		{kid: "rsa-ps", alg: "PS256", pub: k.rsa2.Public()},
		{kid: "ec-256", alg: "ES256", pub: k.ec256.Public()},
		{kid: "ec-384", alg: "ES384", pub: k.ec384.Public()},
		{kid: "ed", alg: "EdDSA", pub: k.ed.Public()},
		{kid: "enc", use: "enc", pub: k.rsaStranger.Public()},
	}
}

// TestVerifyJWKS: every asymmetric algorithm, and every reason a token is
// refused, with keys from a key set.
func TestVerifyJWKS(t *testing.T) {
	srv := newJWKSServer(t, standardKeys()...)
	v := jwksVerifier(t, JWTConfig{JWKSURL: srv.URL + "/jwks.json", Issuer: testIssuer, Audience: testAudience, Leeway: testLeeway},
		zerolog.Nop(), prometheus.NewRegistry())
	waitReady(t, v)
	k := keys()
	tests := []struct {
		name  string
		token string
		want  string
	}{
		{"RS256", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa-1", claims()), ""},
		{"RS384", sign(t, jwt.SigningMethodRS384, k.rsa, "rsa-1", claims()), ""},
		{"RS512", sign(t, jwt.SigningMethodRS512, k.rsa, "rsa-1", claims()), ""},
		{"PS256", sign(t, jwt.SigningMethodPS256, k.rsa2, "rsa-ps", claims()), ""},
		{"PS512 with a key without alg", sign(t, jwt.SigningMethodPS512, k.rsa, "rsa-1", claims()), ""},
		{"ES256", sign(t, jwt.SigningMethodES256, k.ec256, "ec-256", claims()), ""},
		{"ES384", sign(t, jwt.SigningMethodES384, k.ec384, "ec-384", claims()), ""},
		{"EdDSA", sign(t, jwt.SigningMethodEdDSA, k.ed, "ed", claims()), ""},
		{"RS256 without kid", sign(t, jwt.SigningMethodRS256, k.rsa, "", claims()), ""},
		{"ES256 without kid", sign(t, jwt.SigningMethodES256, k.ec256, "", claims()), ""},
		{"EdDSA without kid", sign(t, jwt.SigningMethodEdDSA, k.ed, "", claims()), ""},

		{"RS256 signed by an unknown key, known kid", sign(t, jwt.SigningMethodRS256, k.rsaStranger, "rsa-1", claims()), ReasonBadSignature},
		{"RS256 signed by an unknown key, no kid", sign(t, jwt.SigningMethodRS256, k.rsaStranger, "", claims()), ReasonBadSignature},
		{"ES256 with the kid of an RSA key", sign(t, jwt.SigningMethodES256, k.ec256, "rsa-1", claims()), ReasonBadSignature},
		{"payload changed", swapPayload(sign(t, jwt.SigningMethodEdDSA, k.ed, "ed", claims()), `{"sub":"admin"}`), ReasonBadSignature},
		{"kid unknown", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa-404", claims()), ReasonUnknownKID},
		{"kid not a string", rsaWithHeader(t, map[string]any{"kid": 7}), ReasonUnknownKID},
		{"PS384 with a PS256 key", sign(t, jwt.SigningMethodPS384, k.rsa2, "rsa-ps", claims()), ReasonAlgorithm},
		{"RS256 with an ES256 key", sign(t, jwt.SigningMethodRS256, k.rsa, "ec-256", claims()), ReasonAlgorithm},
		{"ES512 without kid: no key fits", sign(t, jwt.SigningMethodES512, mustEC521(t), "", claims()), ReasonBadSignature},
		{"a key published for encryption", sign(t, jwt.SigningMethodRS256, k.rsaStranger, "enc", claims()), ReasonAlgorithm},
		{"HS256 with only JWKS configured", hs256(t, testSecret, claims()), ReasonAlgorithm},
		{"HS256 keyed with the RSA public key", sign(t, jwt.SigningMethodHS256, publicPEM(t, k.rsa.Public()), "rsa-1", claims()), ReasonAlgorithm},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "rsa-1", claims()), ReasonAlgorithm},

		{"expired", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa-1", claims(set("exp", at(-time.Hour)))), ReasonExpired},
		{"nbf ahead", sign(t, jwt.SigningMethodES256, k.ec256, "ec-256", claims(set("nbf", at(time.Hour)))), ReasonNotYet},
		{"wrong iss", sign(t, jwt.SigningMethodEdDSA, k.ed, "ed", claims(set("iss", "x"))), ReasonIssuer},
		{"wrong aud", sign(t, jwt.SigningMethodPS256, k.rsa2, "rsa-ps", claims(set("aud", []string{"x"}))), ReasonAudience},
		{"malformed", "eyJhbGciOiJSUzI1NiJ9.e30", ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := v.Verify(tt.token)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				var m map[string]any
				if json.Unmarshal(c.JSON, &m) != nil || m["sub"] != "user_42" {
					t.Errorf("claims %s", c.JSON)
				}
				return
			}
			if err == nil {
				t.Fatalf("verified, want refused for %q", tt.want)
			}
			wantRefused(t, err, tt.want, tt.token)
		})
	}
}

func rsaWithHeader(t *testing.T, header map[string]any) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims())
	for k, v := range header {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(keys().rsa)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustEC521(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestJWKSWithHMAC: with both configured, each family keeps to its own
// keys, so a public key used as an HMAC secret gets nowhere.
func TestJWKSWithHMAC(t *testing.T) {
	srv := newJWKSServer(t, standardKeys()...)
	v := jwksVerifier(t, JWTConfig{JWKSURL: srv.URL, HMACSecrets: []string{testSecret}}, zerolog.Nop(), nil)
	waitReady(t, v)
	k := keys()
	if _, err := v.Verify(hs256(t, testSecret, claims())); err != nil {
		t.Errorf("HS256: %v", err)
	}
	if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, k.rsa, "rsa-1", claims())); err != nil {
		t.Errorf("RS256: %v", err)
	}
	pemKey := publicPEM(t, k.rsa.Public())
	_, err := v.Verify(sign(t, jwt.SigningMethodHS256, pemKey, "rsa-1", claims()))
	wantRefused(t, err, ReasonBadSignature, "")
}

// TestJWKSDownAtStart: NewVerifier succeeds with the endpoint failing,
// Ready says why, tokens are refused as "no keys yet", and once the
// endpoint answers the keys arrive without a restart.
func TestJWKSDownAtStart(t *testing.T) {
	srv := newJWKSServer(t)
	srv.answer(http.StatusServiceUnavailable, []byte("down for maintenance"))
	reg := prometheus.NewRegistry()
	v := jwksVerifier(t, JWTConfig{JWKSURL: srv.URL + "/keys", Required: true}, zerolog.Nop(), reg)
	if !v.Required() {
		t.Error("not required")
	}
	waitFor(t, "a failed fetch", func() bool {
		err := v.Ready(t.Context())
		return err != nil && strings.Contains(err.Error(), "503")
	})
	err := v.Ready(t.Context())
	for _, want := range []string{"auth.jwt.jwks_url", srv.URL + "/keys", "no keys yet"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Ready = %q, want it to contain %q", err, want)
		}
	}
	k := keys()
	withKid := sign(t, jwt.SigningMethodRS256, k.rsa, "rsa-1", claims())
	withoutKid := sign(t, jwt.SigningMethodES256, k.ec256, "", claims())
	for _, tok := range []string{withKid, withoutKid} {
		_, err := v.Verify(tok)
		wantRefused(t, err, ReasonNoKeys, tok)
	}
	// HMAC is not configured: HS* stays refused for what it is.
	_, err = v.Verify(hs256(t, testSecret, claims()))
	wantRefused(t, err, ReasonAlgorithm, "")

	srv.serve(t, standardKeys()...)
	start := time.Now()
	waitReady(t, v)
	t.Logf("keys arrived %v after the endpoint came up", time.Since(start).Round(time.Millisecond))
	for _, tok := range []string{withKid, withoutKid} {
		if _, err := v.Verify(tok); err != nil {
			t.Errorf("Verify once keys arrived: %v", err)
		}
	}
	// Retries stop once keys are there.
	n := srv.fetches.Load()
	time.Sleep(150 * time.Millisecond)
	if m := srv.fetches.Load(); m != n {
		t.Errorf("%d fetches after the keys arrived", m-n)
	}
	if got := metricValue(t, v.jwks.fetchErr); got < 1 {
		t.Errorf("cablecar_jwks_refreshes_total{outcome=error} = %v, want ≥ 1", got)
	}
	if got := metricValue(t, v.jwks.fetchOK); got != 1 {
		t.Errorf("cablecar_jwks_refreshes_total{outcome=ok} = %v, want 1", got)
	}
	if got := metricValue(t, v.jwks.keysGauge); got != float64(len(standardKeys())) {
		t.Errorf("cablecar_jwks_keys = %v, want %d", got, len(standardKeys()))
	}
	for _, name := range []string{"cablecar_jwks_refreshes_total", "cablecar_jwks_keys", "cablecar_jwt_verifications_total"} {
		if seriesCount(t, reg, name) == 0 {
			t.Errorf("%s is not registered", name)
		}
	}
}

// TestJWKSUnreachable: nothing listens at the URL.
func TestJWKSUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	v := jwksVerifier(t, JWTConfig{JWKSURL: "http://user:hunter2@" + addr + "/jwks"}, zerolog.Nop(), nil)
	waitFor(t, "a failed fetch", func() bool { return v.jwks.lastErr.Load() != nil })
	err = v.Ready(t.Context())
	if err == nil || !strings.Contains(err.Error(), "no keys yet") {
		t.Fatalf("Ready = %v, want no keys yet", err)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("Ready = %q shows the password of the URL", err)
	}
}

// TestJWKSHangingAtStart: an endpoint that never answers holds up neither
// NewVerifier nor Close.
func TestJWKSHangingAtStart(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	start := time.Now()
	v, err := newVerifier(JWTConfig{JWKSURL: "http://" + l.Addr().String()}, zerolog.Nop(), nil, func(j *jwks) {
		j.fetchTimeout = time.Hour
		j.firstWait = 10 * time.Millisecond
	})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("NewVerifier took %v", d)
	}
	err = v.Ready(t.Context())
	if err == nil || !strings.Contains(err.Error(), "first fetch in progress") {
		t.Errorf("Ready = %v, want first fetch in progress", err)
	}
	_, err = v.Verify(sign(t, jwt.SigningMethodRS256, keys().rsa, "rsa-1", claims()))
	wantRefused(t, err, ReasonNoKeys, "")
	start = time.Now()
	v.Close()
	v.Close() // idempotent
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	noJWKSGoroutines(t)
}

// TestJWKSRotation: the issuer switches to a new key with a new kid; a
// token with it verifies at once, through the unknown-kid refresh, without
// a restart. Unknown kids beyond that cannot make Cablecar hammer the
// endpoint, nor hold handshakes up.
func TestJWKSRotation(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t, testJWK{kid: "2024-01", alg: "RS256", pub: k.rsa.Public()})
	var logs testsupport.SyncBuffer
	v := jwksVerifier(t, JWTConfig{JWKSURL: srv.URL}, zerolog.New(&logs), nil)
	waitReady(t, v)
	old := sign(t, jwt.SigningMethodRS256, k.rsa, "2024-01", claims())
	if _, err := v.Verify(old); err != nil {
		t.Fatalf("token of the first key: %v", err)
	}
	before := srv.fetches.Load()

	srv.serve(t, testJWK{kid: "2024-02", alg: "RS256", pub: k.rsa2.Public()})
	rotated := sign(t, jwt.SigningMethodRS256, k.rsa2, "2024-02", claims())
	if _, err := v.Verify(rotated); err != nil {
		t.Fatalf("token of the new key: %v", err)
	}
	if n := srv.fetches.Load() - before; n != 1 {
		t.Errorf("%d fetches for the new kid, want 1", n)
	}
	if _, err := v.Verify(rotated); err != nil {
		t.Fatalf("token of the new key again: %v", err)
	}
	// The set was replaced: the old key is gone.
	_, err := v.Verify(old)
	wantRefused(t, err, ReasonUnknownKID, old)

	before = srv.fetches.Load()
	start := time.Now()
	var wg sync.WaitGroup
	var refused atomic.Int64
	tokens := make([]string, 100)
	for i := range tokens {
		tokens[i] = sign(t, jwt.SigningMethodRS256, k.rsa2, fmt.Sprintf("random-%d-%d", i, time.Now().UnixNano()), claims())
	}
	for i := range 10 {
		wg.Go(func() {
			for _, tok := range tokens[i*10 : i*10+10] {
				if _, err := v.Verify(tok); err != nil && err.(*VerifyError).Reason == ReasonUnknownKID {
					refused.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if refused.Load() != 100 {
		t.Errorf("%d of 100 tokens with random kids refused as unknown key id", refused.Load())
	}
	if n := srv.fetches.Load() - before; n > 2 {
		t.Errorf("100 random kids caused %d fetches, want at most 2", n)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("100 random kids took %v: handshakes wait on the refresh limit", d)
	}
	if _, err := v.Verify(rotated); err != nil {
		t.Errorf("the new key after the random kids: %v", err)
	}

	// Neither a token nor a kid is ever logged.
	for _, tok := range append(tokens, old, rotated) {
		for _, part := range strings.Split(tok, ".") {
			if strings.Contains(logs.String(), part) {
				t.Fatalf("a token appears in the log:\n%s", logs.String())
			}
		}
	}
	if strings.Contains(logs.String(), "random-") {
		t.Errorf("a kid appears in the log:\n%s", logs.String())
	}
}

// TestJWKSBackgroundRefresh: with no token asking, the set is fetched
// again every JWKSRefresh.
func TestJWKSBackgroundRefresh(t *testing.T) {
	k := keys()
	srv := newJWKSServer(t, testJWK{kid: "a", pub: k.ec256.Public()})
	v := jwksVerifier(t, JWTConfig{JWKSURL: srv.URL, JWKSRefresh: 20 * time.Millisecond}, zerolog.Nop(), nil)
	waitReady(t, v)
	srv.serve(t, testJWK{kid: "b", pub: k.ec384.Public()}, testJWK{kid: "c", pub: k.ed.Public()})
	waitFor(t, "the background refresh", func() bool {
		_, err := v.jwks.store.KeyRead(t.Context(), "b")
		return err == nil
	})
	if _, err := v.Verify(sign(t, jwt.SigningMethodES384, k.ec384, "b", claims())); err != nil {
		t.Errorf("token of the refreshed key: %v", err)
	}
	waitFor(t, "the keys gauge", func() bool { return metricValue(t, v.jwks.keysGauge) == 2 })

	// A failing refresh keeps the keys already loaded.
	srv.answer(http.StatusInternalServerError, nil)
	n := srv.fetches.Load()
	waitFor(t, "failed refreshes", func() bool { return srv.fetches.Load() > n+2 })
	if err := v.Ready(t.Context()); err != nil {
		t.Errorf("Ready after failed refreshes with keys cached: %v", err)
	}
	if _, err := v.Verify(sign(t, jwt.SigningMethodEdDSA, k.ed, "c", claims())); err != nil {
		t.Errorf("token of a cached key while refreshes fail: %v", err)
	}
}

// TestJWKSUnusable: an empty or oversized set is no keys, and Ready says
// so; a good set later is picked up.
func TestJWKSUnusable(t *testing.T) {
	for _, tt := range []struct {
		name string
		body []byte
		want string
	}{
		{"empty", []byte(`{"keys":[]}`), "no usable signing keys"},
		{"too large", append(bytes.Repeat([]byte(" "), maxJWKSSize), `{"keys":[]}`...), "larger than"},
		{"not JSON", []byte(`<html>`), "decode"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := newJWKSServer(t)
			srv.answer(http.StatusOK, tt.body)
			v := jwksVerifier(t, JWTConfig{JWKSURL: srv.URL}, zerolog.Nop(), nil)
			waitFor(t, "Ready to say why", func() bool {
				err := v.Ready(t.Context())
				return err != nil && strings.Contains(err.Error(), tt.want)
			})
			srv.serve(t, standardKeys()...)
			waitReady(t, v)
		})
	}
}

// A JWKS of exactly the size limit is still read.
func TestLimitedBody(t *testing.T) {
	body := append(bytes.Repeat([]byte(" "), maxJWKSSize-len(`{"keys":[]}`)), `{"keys":[]}`...)
	srv := newJWKSServer(t)
	srv.answer(http.StatusOK, body)
	v := jwksVerifier(t, JWTConfig{JWKSURL: srv.URL}, zerolog.Nop(), nil)
	waitFor(t, "the set to be read", func() bool {
		err := v.Ready(t.Context())
		return err != nil && strings.Contains(err.Error(), "no usable signing keys")
	})
}
