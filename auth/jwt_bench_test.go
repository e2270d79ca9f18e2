package auth

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/rs/zerolog"
)

// The cost of checking one handshake's token, from raw string to claims.
//
//	go test -run - -bench Verify -benchmem ./auth/

func BenchmarkVerifyHS256(b *testing.B) {
	v, err := NewVerifier(JWTConfig{HMACSecrets: []string{testSecret}, Issuer: testIssuer, Audience: testAudience}, zerolog.Nop(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	v.now = func() time.Time { return jwtNow }
	benchVerify(b, v, hs256(b, testSecret, claims()))
}

func BenchmarkVerifyRS256(b *testing.B) {
	k := keys()
	srv := newJWKSServer(b, testJWK{kid: "rsa-1", alg: "RS256", pub: k.rsa.Public()})
	v, err := newVerifier(JWTConfig{JWKSURL: srv.URL, Issuer: testIssuer, Audience: testAudience}, zerolog.Nop(), nil, fastJWKS)
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	v.now = func() time.Time { return jwtNow }
	waitFor(b, "keys", func() bool { return v.Ready(b.Context()) == nil })
	benchVerify(b, v, sign(b, jwt.SigningMethodRS256, k.rsa, "rsa-1", claims()))
}

func benchVerify(b *testing.B, v *Verifier, token string) {
	if _, err := v.Verify(token); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(token); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkExtractToken(b *testing.B) {
	protocols := []string{"actioncable-v1-json, bearer.eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"}
	b.ReportAllocs()
	for b.Loop() {
		ExtractToken("", "room=1&x=2", "token", protocols)
	}
}
