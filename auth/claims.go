package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// tokenClaims reads the registered claims of a payload for the validator,
// each checked to be of its type (SPEC §6), and keeps the payload,
// compacted, for Claims.JSON.
//
// Names are matched exactly and a repeated name counts for its last value,
// as the app's JSON parser will read them: encoding/json would also take
// "EXP" for exp, and Cablecar would then check a claim the app does not
// see as exp. A null is read as absent (Devise-JWT writes aud: null).
type tokenClaims struct {
	exp, nbf, iat *jwt.NumericDate
	iss           string
	sub           string // a number is written in plain decimal
	aud           jwt.ClaimStrings
	raw           json.RawMessage
}

var _ jwt.Claims = (*tokenClaims)(nil)

func (c *tokenClaims) GetExpirationTime() (*jwt.NumericDate, error) { return c.exp, nil }
func (c *tokenClaims) GetNotBefore() (*jwt.NumericDate, error)      { return c.nbf, nil }
func (c *tokenClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return c.iat, nil }
func (c *tokenClaims) GetIssuer() (string, error)                   { return c.iss, nil }
func (c *tokenClaims) GetSubject() (string, error)                  { return c.sub, nil }
func (c *tokenClaims) GetAudience() (jwt.ClaimStrings, error)       { return c.aud, nil }

// claimTypeError is why a payload is malformed; it names the claim, never
// its value.
type claimTypeError struct{ claim, want string }

func (e claimTypeError) Error() string { return "claim " + e.claim + " is not " + e.want }

// The registered claims that are read, as indexes into their raw values.
const (
	claimExp = iota
	claimNbf
	claimIat
	claimIss
	claimSub
	claimAud
	numClaims
)

func (c *tokenClaims) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return errors.New("payload is not a JSON object")
	}
	if !json.Valid(b) {
		return errors.New("payload is not JSON")
	}
	// Slices of b, which is only lent: each is decoded before returning.
	var raw [numClaims][]byte
	err := members(b, func(name, value []byte) error {
		key := name[1 : len(name)-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			// "\u0065xp" is exp to the app's parser too.
			var k string
			if err := json.Unmarshal(name, &k); err != nil {
				return err
			}
			key = []byte(k)
		}
		switch string(key) {
		case "exp":
			raw[claimExp] = value
		case "nbf":
			raw[claimNbf] = value
		case "iat":
			raw[claimIat] = value
		case "iss":
			raw[claimIss] = value
		case "sub":
			raw[claimSub] = value
		case "aud":
			raw[claimAud] = value
		}
		return nil
	})
	if err != nil {
		return err
	}
	if c.exp, err = numericDate("exp", raw[claimExp]); err != nil {
		return err
	}
	if c.nbf, err = numericDate("nbf", raw[claimNbf]); err != nil {
		return err
	}
	if c.iat, err = numericDate("iat", raw[claimIat]); err != nil {
		return err
	}
	if c.iss, err = stringClaim("iss", raw[claimIss]); err != nil {
		return err
	}
	if c.sub, err = subject(raw[claimSub]); err != nil {
		return err
	}
	if c.aud, err = audience(raw[claimAud]); err != nil {
		return err
	}
	if !bytes.ContainsAny(b, " \t\r\n") {
		// Already compact, as issuers write it.
		c.raw = bytes.Clone(b)
		return nil
	}
	var buf bytes.Buffer
	buf.Grow(len(b))
	if err := json.Compact(&buf, b); err != nil {
		return err
	}
	c.raw = buf.Bytes()
	return nil
}

// members calls f with the raw name (quoted, as written) and raw value of
// each member of obj, a valid JSON object, in order.
func members(obj []byte, f func(name, value []byte) error) error {
	i := skipSpace(obj, 1)
	for i < len(obj) && obj[i] != '}' {
		end := skipString(obj, i)
		name := obj[i:end]
		i = skipSpace(obj, skipSpace(obj, end)+1) // past the ':'
		end = skipValue(obj, i)
		if err := f(name, obj[i:end]); err != nil {
			return err
		}
		i = skipSpace(obj, end)
		if i < len(obj) && obj[i] == ',' {
			i = skipSpace(obj, i+1)
		}
	}
	return nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// skipString returns the end of the string that starts at b[i].
func skipString(b []byte, i int) int {
	for i++; i < len(b) && b[i] != '"'; i++ {
		if b[i] == '\\' {
			i++
		}
	}
	return i + 1
}

// skipValue returns the end of the value that starts at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return i
	}
	// A number, true, false or null.
	for ; i < len(b); i++ {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return i
		}
	}
	return i
}

// absent reports whether a claim is missing or null.
func absent(v []byte) bool { return len(v) == 0 || string(v) == "null" }

// isNumber reports whether v, a valid JSON value, is a number: the only
// values that start with a digit or a minus.
func isNumber(v []byte) bool { return v[0] == '-' || v[0] >= '0' && v[0] <= '9' }

// maxDate bounds exp, nbf and iat, in seconds either side of 1970: where
// a float64 still holds every whole second, 285 million years away.
const maxDate = 1 << 53

func numericDate(name string, v []byte) (*jwt.NumericDate, error) {
	if absent(v) {
		return nil, nil
	}
	if !isNumber(v) {
		// jwt's own NumericDate would read "1700000000" as the number.
		return nil, claimTypeError{name, "a number"}
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil || math.Abs(f) > maxDate {
		return nil, claimTypeError{name, "a date (a number of seconds within ±2^53)"}
	}
	// As jwt reads a NumericDate: whole seconds, then the fraction.
	sec, frac := math.Modf(f)
	return jwt.NewNumericDate(time.Unix(int64(sec), int64(frac*1e9))), nil
}

func stringClaim(name string, v []byte) (string, error) {
	if absent(v) {
		return "", nil
	}
	if v[0] != '"' {
		return "", claimTypeError{name, "a string"}
	}
	var s string
	err := json.Unmarshal(v, &s)
	return s, err
}

func audience(v []byte) (jwt.ClaimStrings, error) {
	if absent(v) {
		return nil, nil
	}
	wrong := claimTypeError{"aud", "a string or a list of strings"}
	switch v[0] {
	case '"':
		s, err := stringClaim("aud", v)
		return jwt.ClaimStrings{s}, err
	case '[':
		var list []json.RawMessage
		if err := json.Unmarshal(v, &list); err != nil {
			return nil, err
		}
		out := make(jwt.ClaimStrings, 0, len(list))
		for _, e := range list {
			if e[0] != '"' {
				// null included: into a string it would silently be "".
				return nil, wrong
			}
			s, err := stringClaim("aud", e)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, wrong
}

// subject reads sub: a string (RFC 7519), or a number, as Rails apps write
// user.id. A number becomes plain decimal, without exponent or a fraction
// of zeros, so 42, 42.0 and 4.2e1 are all "42".
func subject(v []byte) (string, error) {
	if absent(v) {
		return "", nil
	}
	if !isNumber(v) {
		if v[0] != '"' {
			return "", claimTypeError{"sub", "a string or a number"}
		}
		return stringClaim("sub", v)
	}
	if bytes.IndexAny(v, ".eE") < 0 {
		return string(v), nil // an integer, kept digit for digit however long
	}
	// Through a float64, not exactly: 1e999999999 exactly is a billion
	// digits.
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil {
		return "", claimTypeError{"sub", "a number within the range of a double"}
	}
	// The shortest digits that read back as f, in positional notation.
	return strconv.FormatFloat(f, 'f', -1, 64), nil
}
