package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
)

// The verifier's clock in these tests: whole seconds, as exp and nbf are.
var jwtNow = time.Unix(1700000000, 0)

const (
	testIssuer   = "https://auth.example.com/"
	testAudience = "cablecar"
	testLeeway   = 30 * time.Second
	testSecret   = "0123456789abcdef0123456789abcdef-current"
	testSecret2  = "0123456789abcdef0123456789abcdef-previous"
)

// Keys are generated once per run: none is checked in.
type testKeys struct {
	rsa, rsa2, rsaStranger *rsa.PrivateKey
	ec256, ec384           *ecdsa.PrivateKey
	ed                     ed25519.PrivateKey
}

var keys = sync.OnceValue(func() *testKeys {
	k := &testKeys{}
	var err error
	for _, p := range []**rsa.PrivateKey{&k.rsa, &k.rsa2, &k.rsaStranger} {
		if *p, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	}
	if k.ec256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		panic(err)
	}
	if k.ec384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
		panic(err)
	}
	if _, k.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
		panic(err)
	}
	return k
})

// claims returns standard claims valid at jwtNow, changed by the edits.
func claims(edits ...func(jwt.MapClaims)) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub":  "user_42",
		"iss":  testIssuer,
		"aud":  testAudience,
		"iat":  jwtNow.Add(-time.Minute).Unix(),
		"exp":  jwtNow.Add(time.Hour).Unix(),
		"role": "admin",
	}
	for _, e := range edits {
		e(c)
	}
	return c
}

func set(k string, v any) func(jwt.MapClaims) { return func(c jwt.MapClaims) { c[k] = v } }
func del(k string) func(jwt.MapClaims)        { return func(c jwt.MapClaims) { delete(c, k) } }
func at(d time.Duration) int64                { return jwtNow.Add(d).Unix() }

// sign makes a token with m and key; kid "" leaves the header without one.
func sign(t testing.TB, m jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("signing a %s token: %v", m.Alg(), err)
	}
	return s
}

func hs256(t testing.TB, secret string, c jwt.MapClaims) string {
	return sign(t, jwt.SigningMethodHS256, []byte(secret), "", c)
}

// rawToken builds a token from literal header and payload JSON, signed
// with HS256 and testSecret, for shapes jwt would not produce.
func rawToken(header, payload string) string {
	enc := base64.RawURLEncoding
	s := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload))
	m := hmac.New(sha256.New, []byte(testSecret))
	m.Write([]byte(s))
	return s + "." + enc.EncodeToString(m.Sum(nil))
}

func hmacVerifier(t testing.TB, cfg JWTConfig) *Verifier {
	t.Helper()
	v, err := NewVerifier(cfg, zerolog.Nop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	v.now = func() time.Time { return jwtNow }
	t.Cleanup(v.Close)
	return v
}

// wantRefused checks that err is a *VerifyError with reason, whose text
// does not quote the token.
func wantRefused(t *testing.T, err error, reason, token string) {
	t.Helper()
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v (%T) is not a *VerifyError", err, err)
	}
	if ve.Reason != reason {
		t.Fatalf("refused for %q (%v), want %q", ve.Reason, ve.Err, reason)
	}
	if ve.Err == nil {
		t.Errorf("VerifyError %q has no Err", reason)
	}
	for _, part := range strings.Split(token, ".") {
		if len(part) >= 8 && (strings.Contains(err.Error(), part) || ve.Err != nil && strings.Contains(ve.Err.Error(), part)) {
			t.Errorf("error %q quotes the token", err)
		}
	}
}

func TestNewVerifierOff(t *testing.T) {
	for _, cfg := range []JWTConfig{{}, {Required: true, HMACSecrets: []string{"", ""}, Issuer: "x"}} {
		v, err := NewVerifier(cfg, zerolog.Nop(), prometheus.NewRegistry())
		if v != nil || err != nil {
			t.Fatalf("NewVerifier(%+v) = %v, %v; want nil, nil", cfg, v, err)
		}
		// A nil verifier is usable: JWT off.
		if v.Required() || v.QueryParam() != "" || v.Ready(t.Context()) != nil {
			t.Error("a nil verifier is required, has a query parameter or is not ready")
		}
		v.Close()
		_, err = v.Verify(hs256(t, testSecret, claims()))
		wantRefused(t, err, ReasonAlgorithm, "")
	}
}

func TestNewVerifierConfig(t *testing.T) {
	v := hmacVerifier(t, JWTConfig{Required: true, HMACSecrets: []string{testSecret}})
	if !v.Required() || v.QueryParam() != "token" {
		t.Errorf("Required, QueryParam = %v, %q; want true, token", v.Required(), v.QueryParam())
	}
	if err := v.Ready(t.Context()); err != nil {
		t.Errorf("an HMAC verifier is not ready: %v", err)
	}
	v = hmacVerifier(t, JWTConfig{HMACSecrets: []string{testSecret}, QueryParam: "jwt"})
	if v.Required() || v.QueryParam() != "jwt" {
		t.Errorf("Required, QueryParam = %v, %q; want false, jwt", v.Required(), v.QueryParam())
	}

	for _, u := range []string{"keys.json", "ftp://example.com/keys", "http://", "://x"} {
		if _, err := NewVerifier(JWTConfig{JWKSURL: u}, zerolog.Nop(), nil); err == nil || !strings.Contains(err.Error(), "jwks_url") {
			t.Errorf("NewVerifier with jwks_url %q: %v, want an error naming jwks_url", u, err)
		}
	}

	// Registering twice on one registry is an error, not a panic.
	reg := prometheus.NewRegistry()
	v1, err := NewVerifier(JWTConfig{HMACSecrets: []string{testSecret}}, zerolog.Nop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer v1.Close()
	if _, err := NewVerifier(JWTConfig{HMACSecrets: []string{testSecret}}, zerolog.Nop(), reg); err == nil {
		t.Error("a second verifier on the same registry: no error")
	}
}

func TestNewVerifierWarnsShortSecret(t *testing.T) {
	var buf bytes.Buffer
	v, err := NewVerifier(JWTConfig{HMACSecrets: []string{"short"}}, zerolog.New(&buf), nil)
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	if !strings.Contains(buf.String(), "shorter than 32 bytes") || strings.Contains(buf.String(), "short\"") {
		t.Errorf("log = %s; want a warning that does not quote the secret", buf.String())
	}
}

// TestVerifyHMAC: every reason a token is refused, with HMAC keys.
func TestVerifyHMAC(t *testing.T) {
	v := hmacVerifier(t, JWTConfig{
		HMACSecrets: []string{testSecret},
		Issuer:      testIssuer,
		Audience:    testAudience,
		Leeway:      testLeeway,
	})
	k := keys()
	tests := []struct {
		name  string
		token string
		want  string // reason; "" = verified
	}{
		{"valid", hs256(t, testSecret, claims()), ""},
		{"HS384", sign(t, jwt.SigningMethodHS384, []byte(testSecret), "", claims()), ""},
		{"HS512", sign(t, jwt.SigningMethodHS512, []byte(testSecret), "", claims()), ""},
		{"a kid is ignored for HMAC", sign(t, jwt.SigningMethodHS256, []byte(testSecret), "whatever", claims()), ""},
		{"no exp", hs256(t, testSecret, claims(del("exp"))), ""},

		// exp: valid while now < exp + leeway.
		{"expired", hs256(t, testSecret, claims(set("exp", at(-time.Hour)))), ReasonExpired},
		{"expired beyond the leeway by 1s", hs256(t, testSecret, claims(set("exp", at(-testLeeway-time.Second)))), ReasonExpired},
		{"expired exactly the leeway ago", hs256(t, testSecret, claims(set("exp", at(-testLeeway)))), ReasonExpired},
		{"expired within the leeway", hs256(t, testSecret, claims(set("exp", at(-testLeeway+time.Second)))), ""},
		{"expires now, within the leeway", hs256(t, testSecret, claims(set("exp", at(0)))), ""},

		// nbf and iat: valid once now >= nbf - leeway.
		{"nbf in the future beyond the leeway", hs256(t, testSecret, claims(set("nbf", at(testLeeway+time.Second)))), ReasonNotYet},
		{"nbf exactly the leeway ahead", hs256(t, testSecret, claims(set("nbf", at(testLeeway)))), ""},
		{"nbf within the leeway", hs256(t, testSecret, claims(set("nbf", at(time.Second)))), ""},
		{"nbf passed", hs256(t, testSecret, claims(set("nbf", at(-time.Hour)))), ""},
		{"iat in the future beyond the leeway", hs256(t, testSecret, claims(set("iat", at(testLeeway+time.Second)))), ReasonNotYet},
		{"iat within the leeway", hs256(t, testSecret, claims(set("iat", at(testLeeway)))), ""},

		{"wrong iss", hs256(t, testSecret, claims(set("iss", "https://evil.example.com/"))), ReasonIssuer},
		{"iss differs by a slash", hs256(t, testSecret, claims(set("iss", strings.TrimSuffix(testIssuer, "/")))), ReasonIssuer},
		{"no iss", hs256(t, testSecret, claims(del("iss"))), ReasonIssuer},
		{"wrong aud", hs256(t, testSecret, claims(set("aud", "other-app"))), ReasonAudience},
		{"no aud", hs256(t, testSecret, claims(del("aud"))), ReasonAudience},
		{"aud array containing it", hs256(t, testSecret, claims(set("aud", []string{"other-app", testAudience}))), ""},
		{"aud array without it", hs256(t, testSecret, claims(set("aud", []string{"other-app", "third"}))), ReasonAudience},
		{"aud empty array", hs256(t, testSecret, claims(set("aud", []string{}))), ReasonAudience},
		{"expired and wrong iss: expired first", hs256(t, testSecret, claims(set("exp", at(-time.Hour)), set("iss", "x"))), ReasonExpired},
		{"no iss and no aud: issuer first", hs256(t, testSecret, claims(del("iss"), del("aud"))), ReasonIssuer},

		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", claims()), ReasonAlgorithm},
		{"alg none with a signature", rawToken(`{"alg":"none","typ":"JWT"}`, `{"sub":"x"}`), ReasonAlgorithm},
		{"alg NONE", rawToken(`{"alg":"NONE"}`, `{"sub":"x"}`), ReasonAlgorithm},
		{"alg unknown", rawToken(`{"alg":"HS1024"}`, `{"sub":"x"}`), ReasonAlgorithm},
		{"alg missing", rawToken(`{"typ":"JWT"}`, `{"sub":"x"}`), ReasonAlgorithm},
		{"alg not a string", rawToken(`{"alg":256}`, `{"sub":"x"}`), ReasonAlgorithm},
		{"RS256 with only HMAC configured", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa-1", claims()), ReasonAlgorithm},
		{"ES256 with only HMAC configured", sign(t, jwt.SigningMethodES256, k.ec256, "", claims()), ReasonAlgorithm},
		{"EdDSA with only HMAC configured", sign(t, jwt.SigningMethodEdDSA, k.ed, "", claims()), ReasonAlgorithm},

		{"bad signature: other secret", hs256(t, "another secret, as long as the real one", claims()), ReasonBadSignature},
		{"bad signature: payload changed", swapPayload(hs256(t, testSecret, claims()), `{"sub":"admin"}`), ReasonBadSignature},
		{"bad signature: HS256 signature on an HS512 header", resign(hs256(t, testSecret, claims()), `{"alg":"HS512","typ":"JWT"}`), ReasonBadSignature},
		{"bad signature: empty", strings.TrimRight(hs256(t, testSecret, claims()), "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), ReasonBadSignature},
		{"bad signature beats expired", hs256(t, "another secret, as long as the real one", claims(set("exp", at(-time.Hour)))), ReasonBadSignature},

		{"malformed: empty", "", ReasonMalformed},
		{"malformed: 1 part", "abc", ReasonMalformed},
		{"malformed: 2 parts", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0", ReasonMalformed},
		{"malformed: 4 parts", hs256(t, testSecret, claims()) + ".x", ReasonMalformed},
		{"malformed: bad base64 header", "eyJhbGciOiJIUzI1NiJ9!." + strings.SplitN(hs256(t, testSecret, claims()), ".", 2)[1], ReasonMalformed},
		{"malformed: padded base64", strings.Replace(hs256(t, testSecret, claims()), ".", "==.", 1), ReasonMalformed},
		{"malformed: bad base64 payload", "eyJhbGciOiJIUzI1NiJ9.e*yJ.c2ln", ReasonMalformed},
		{"malformed: bad base64 signature", swapSignature(hs256(t, testSecret, claims()), "c2ln*"), ReasonMalformed},
		{"malformed: bad JSON header", rawToken(`{"alg":"HS256"`, `{"sub":"x"}`), ReasonMalformed},
		{"malformed: bad JSON payload", rawToken(`{"alg":"HS256"}`, `{"sub":"x"`), ReasonMalformed},
		{"malformed: payload an array", rawToken(`{"alg":"HS256"}`, `["sub"]`), ReasonMalformed},
		{"malformed: payload null", rawToken(`{"alg":"HS256"}`, `null`), ReasonMalformed},
		{"malformed: payload a string", rawToken(`{"alg":"HS256"}`, `"x"`), ReasonMalformed},
		{"malformed: exp a string", rawToken(`{"alg":"HS256"}`, `{"exp":"tomorrow"}`), ReasonMalformed},
		{"malformed: aud a number", rawToken(`{"alg":"HS256"}`, `{"aud":7}`), ReasonMalformed},
		{"malformed: crit extension", rawToken(`{"alg":"HS256","crit":["b64"],"b64":false}`, `{"sub":"x"}`), ReasonMalformed},
		{"malformed: too long", hs256(t, testSecret, claims(set("pad", strings.Repeat("x", maxTokenSize)))), ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := v.Verify(tt.token)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if !json.Valid(c.JSON) || c.JSON[0] != '{' {
					t.Errorf("claims JSON %s is not an object", c.JSON)
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

// swapPayload replaces the payload of a token and keeps its signature.
func swapPayload(token, payload string) string {
	p := strings.Split(token, ".")
	p[1] = base64.RawURLEncoding.EncodeToString([]byte(payload))
	return strings.Join(p, ".")
}

func swapSignature(token, sig string) string {
	p := strings.Split(token, ".")
	p[2] = sig
	return strings.Join(p, ".")
}

// resign keeps payload and signature under another header.
func resign(token, header string) string {
	p := strings.Split(token, ".")
	p[0] = base64.RawURLEncoding.EncodeToString([]byte(header))
	return strings.Join(p, ".")
}

func TestVerifyErrSentinels(t *testing.T) {
	v := hmacVerifier(t, JWTConfig{HMACSecrets: []string{testSecret}, Issuer: testIssuer, Audience: testAudience})
	for _, tt := range []struct {
		token string
		want  error
	}{
		{hs256(t, testSecret, claims(set("exp", at(-time.Hour)))), jwt.ErrTokenExpired},
		{hs256(t, testSecret, claims(set("nbf", at(time.Hour)))), jwt.ErrTokenNotValidYet},
		{hs256(t, testSecret, claims(del("iss"))), jwt.ErrTokenInvalidIssuer},
		{hs256(t, testSecret, claims(del("aud"))), jwt.ErrTokenInvalidAudience},
		{hs256(t, "another secret, as long as the real one", claims()), jwt.ErrTokenSignatureInvalid},
		{"a.b", jwt.ErrTokenMalformed},
	} {
		if _, err := v.Verify(tt.token); !errors.Is(err, tt.want) {
			t.Errorf("Verify: %v, want errors.Is %v", err, tt.want)
		}
	}
}

func TestVerifyClaims(t *testing.T) {
	v := hmacVerifier(t, JWTConfig{HMACSecrets: []string{testSecret}})
	payload := "{\n  \"sub\": \"user_42\",\n  \"exp\": 1700003600,\n  \"name\": \"Zoë \\\"Z\\\" <z@example.com>\",\n  \"n\": 12345678901234567890,\n  \"roles\": [ \"a\", \"b\" ]\n}"
	c, err := v.Verify(rawToken(`{"alg":"HS256","typ":"JWT"}`, payload))
	if err != nil {
		t.Fatal(err)
	}
	// Compact, but otherwise the payload as the issuer wrote it: big
	// numbers and key order intact.
	want := `{"sub":"user_42","exp":1700003600,"name":"Zoë \"Z\" <z@example.com>","n":12345678901234567890,"roles":["a","b"]}`
	if string(c.JSON) != want {
		t.Errorf("JSON = %s\nwant   %s", c.JSON, want)
	}
	if !c.Expires.Equal(time.Unix(1700003600, 0)) {
		t.Errorf("Expires = %v, want %v", c.Expires, time.Unix(1700003600, 0))
	}
	// Without iss or aud configured, a null payload would pass as empty
	// claims if it were not refused for what it is.
	_, err = v.Verify(rawToken(`{"alg":"HS256"}`, ` null `))
	wantRefused(t, err, ReasonMalformed, "")
	c, err = v.Verify(hs256(t, testSecret, claims(del("exp"))))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Expires.IsZero() {
		t.Errorf("Expires = %v without exp, want zero", c.Expires)
	}
}

// TestHMACRotation: while the issuer rotates, tokens signed with either
// secret pass.
func TestHMACRotation(t *testing.T) {
	v := hmacVerifier(t, JWTConfig{HMACSecrets: []string{testSecret, "", testSecret2}})
	for _, s := range []string{testSecret, testSecret2} {
		if _, err := v.Verify(hs256(t, s, claims())); err != nil {
			t.Errorf("a token signed with secret %d: %v", len(s), err)
		}
		if _, err := v.Verify(sign(t, jwt.SigningMethodHS512, []byte(s), "", claims())); err != nil {
			t.Errorf("an HS512 token signed with secret %d: %v", len(s), err)
		}
	}
	_, err := v.Verify(hs256(t, "a third secret, neither of the two", claims()))
	wantRefused(t, err, ReasonBadSignature, "")
}

func TestVerifyMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	v, err := NewVerifier(JWTConfig{HMACSecrets: []string{testSecret}}, zerolog.Nop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	v.now = func() time.Time { return jwtNow }
	defer v.Close()
	v.Verify(hs256(t, testSecret, claims()))
	v.Verify(hs256(t, testSecret, claims()))
	v.Verify(hs256(t, testSecret, claims(set("exp", at(-time.Hour)))))
	v.Verify("x")
	for result, want := range map[string]float64{"ok": 2, "token_expired": 1, "malformed_token": 1, "no_keys_yet": 0, "bad_signature": 0} {
		got := metricValue(t, v.results[resultIndex(t, result)])
		if got != want {
			t.Errorf("cablecar_jwt_verifications_total{result=%q} = %v, want %v", result, got, want)
		}
	}
	// All results exist from the start, so dashboards see zeros.
	if n := seriesCount(t, reg, "cablecar_jwt_verifications_total"); n != int(numReasons) {
		t.Errorf("%d series of cablecar_jwt_verifications_total, want %d", n, numReasons)
	}
}

func resultIndex(t *testing.T, label string) reason {
	for r := range numReasons {
		if strings.ReplaceAll(reasonText[r], " ", "_") == label {
			return r
		}
	}
	t.Fatalf("no result %q", label)
	return 0
}

// publicPEM is what a key-confusion attack uses as the HMAC secret.
func publicPEM(t testing.TB, pub any) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// metricValue reads a counter or gauge.
func metricValue(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// seriesCount counts the series of a metric family in reg.
func seriesCount(t testing.TB, reg *prometheus.Registry, name string) int {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return len(f.Metric)
		}
	}
	return 0
}
