package auth

import (
	"testing"
	"time"
)

// TestClaimTypes: a registered claim of the wrong type makes the token
// malformed (SPEC §6), whatever else it says: a date given as a string
// would otherwise be read as the number it spells, and a claim that is
// not checked as what it is cannot be trusted as what it says.
func TestClaimTypes(t *testing.T) {
	v := hmacVerifier(t, JWTConfig{HMACSecrets: []string{testSecret}})
	const exp = `1700003600`
	tests := []struct {
		name, payload string
		malformed     bool
	}{
		{"all of the right types", `{"sub":"u","iss":"i","aud":"a","exp":` + exp + `,"nbf":1699990000,"iat":1699990000}`, false},
		{"aud a list", `{"aud":["a","b"]}`, false},
		{"aud an empty list", `{"aud":[]}`, false},
		{"dates with a fraction", `{"exp":1700003600.5,"iat":1699999999.25}`, false},
		{"dates with an exponent", `{"exp":1.7000036e9}`, false},
		// Devise-JWT writes aud: null when the client sent no JWT_AUD;
		// null is read as absent for every registered claim.
		{"null claims", `{"sub":null,"iss":null,"aud":null,"exp":null,"nbf":null,"iat":null}`, false},
		{"unregistered claims of any type", `{"jti":7,"scp":["x"],"name":{"a":1},"flag":true}`, false},
		{"a registered name in another case is not it", `{"EXP":"soon","Sub":true,"AUD":1}`, false},

		{"exp a string of digits", `{"exp":"` + exp + `"}`, true},
		{"exp a string", `{"exp":"tomorrow"}`, true},
		{"exp true", `{"exp":true}`, true},
		{"exp an object", `{"exp":{"at":` + exp + `}}`, true},
		{"exp a list", `{"exp":[` + exp + `]}`, true},
		{"nbf a string", `{"nbf":"1699990000"}`, true},
		{"iat a string", `{"iat":"1699990000"}`, true},
		{"iat false", `{"iat":false}`, true},
		{"iss a number", `{"iss":7}`, true},
		{"iss a list", `{"iss":["i"]}`, true},
		{"iss an object", `{"iss":{}}`, true},
		{"aud a number", `{"aud":7}`, true},
		{"aud true", `{"aud":true}`, true},
		{"aud an object", `{"aud":{"a":1}}`, true},
		{"aud a list holding a number", `{"aud":["a",7]}`, true},
		{"aud a list holding null", `{"aud":["a",null]}`, true},
		{"aud a list holding a list", `{"aud":[["a"]]}`, true},
		{"sub true", `{"sub":true}`, true},
		{"sub a list", `{"sub":["42"]}`, true},
		{"sub an object", `{"sub":{"id":42}}`, true},
		{"a wrong type after a right one", `{"exp":` + exp + `,"exp":"` + exp + `"}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := rawToken(`{"alg":"HS256","typ":"JWT"}`, tt.payload)
			_, err := v.Verify(tok)
			if !tt.malformed {
				if err != nil {
					t.Fatalf("Verify(%s): %v", tt.payload, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify(%s) accepted it, want malformed", tt.payload)
			}
			wantRefused(t, err, ReasonMalformed, tok)
		})
	}
}

// TestClaimTypesBeforeChecks: a wrong type is malformed even where the
// claim would otherwise be refused for its value: the token is not read
// at all.
func TestClaimTypesBeforeChecks(t *testing.T) {
	v := hmacVerifier(t, JWTConfig{HMACSecrets: []string{testSecret}, Issuer: testIssuer, Audience: testAudience})
	for _, payload := range []string{
		`{"iss":7,"aud":"cablecar"}`,
		`{"iss":"` + testIssuer + `","aud":7}`,
		`{"iss":"` + testIssuer + `","aud":"cablecar","exp":"1"}`,
	} {
		tok := rawToken(`{"alg":"HS256"}`, payload)
		_, err := v.Verify(tok)
		wantRefused(t, err, ReasonMalformed, tok)
	}
}

// TestNumericSub: Rails apps write sub: user.id, a number. It is accepted;
// the claims reach the app as the token had them, and Subject, for
// Cablecar's own use, holds the number in plain decimal.
func TestNumericSub(t *testing.T) {
	v := hmacVerifier(t, JWTConfig{HMACSecrets: []string{testSecret}, Issuer: testIssuer, Audience: testAudience, Leeway: testLeeway})
	tail := `,"iss":"` + testIssuer + `","aud":"cablecar","exp":1700003600}`
	for _, tt := range []struct{ sub, subject string }{
		{`42`, "42"},
		{`0`, "0"},
		{`-7`, "-7"},
		{`12345678901234567890123`, "12345678901234567890123"}, // beyond int64 and float64: kept exact
		{`4.2e1`, "42"},
		{`42.0`, "42"},
		{`1E3`, "1000"},
		{`1e21`, "1000000000000000000000"},
		{`1.5`, "1.5"},
		{`-0.25`, "-0.25"},
		{`"42"`, "42"},
		{`"user_42"`, "user_42"},
	} {
		payload := `{"sub":` + tt.sub + tail
		c, err := v.Verify(rawToken(`{"alg":"HS256"}`, payload))
		if err != nil {
			t.Errorf("sub %s: %v", tt.sub, err)
			continue
		}
		if string(c.JSON) != payload {
			t.Errorf("sub %s: claims %s, want them as the token had them: %s", tt.sub, c.JSON, payload)
		}
		if c.Subject != tt.subject {
			t.Errorf("sub %s: Subject %q, want %q", tt.sub, c.Subject, tt.subject)
		}
	}
	c, err := v.Verify(rawToken(`{"alg":"HS256"}`, `{"iss":"`+testIssuer+`","aud":"cablecar"}`))
	if err != nil || c.Subject != "" {
		t.Errorf("no sub: Subject %q, %v; want \"\"", c.Subject, err)
	}
	// A number too large for a float64 but with an exponent is not
	// expanded digit by digit: it is malformed, not a megabyte of zeros.
	tok := rawToken(`{"alg":"HS256"}`, `{"sub":1e999999999`+tail)
	_, err = v.Verify(tok)
	wantRefused(t, err, ReasonMalformed, tok)
}

// TestLeewayZero: auth.jwt.leeway: 0s means no leeway, not the default.
func TestLeewayZero(t *testing.T) {
	none := hmacVerifier(t, JWTConfig{HMACSecrets: []string{testSecret}, Leeway: 0})
	def := hmacVerifier(t, JWTConfig{HMACSecrets: []string{testSecret}, Leeway: testLeeway}) // config's default, 30s
	expired := hs256(t, testSecret, claims(set("exp", at(-time.Second))))
	_, err := none.Verify(expired)
	wantRefused(t, err, ReasonExpired, expired)
	if _, err := def.Verify(expired); err != nil {
		t.Errorf("a token expired 1s ago, with the default leeway: %v", err)
	}
	early := hs256(t, testSecret, claims(set("nbf", at(time.Second))))
	_, err = none.Verify(early)
	wantRefused(t, err, ReasonNotYet, early)
	if _, err := def.Verify(early); err != nil {
		t.Errorf("a token valid in 1s, with the default leeway: %v", err)
	}
	fresh := hs256(t, testSecret, claims(set("exp", at(time.Second)), set("nbf", at(0)), set("iat", at(0))))
	if _, err := none.Verify(fresh); err != nil {
		t.Errorf("a token valid for 1s more, with no leeway: %v", err)
	}
}
