package e2e

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"net/http"
	"reflect"
	"strings"
	"sync"
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
// This file makes the tokens and checks what the app saw; the groups are
// in jwt_hmac_test.go and jwt_jwks_test.go. Each test is a named function:
// the HMAC group's are listed in jwtHMACTests, testHMAC<name> for
// TestJWT/HMAC/cases/<name>; the JWKS and JWKSDownAtStart groups are one
// function each (testJWTJWKS, testJWTJWKSDownAtStart). Run one, or a group,
// with
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

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
