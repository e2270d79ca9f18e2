package auth

import (
	"bytes"
	"encoding/json"
	"errors"

	"github.com/golang-jwt/jwt/v5"
)

// tokenClaims decodes the registered claims for the validator and keeps
// the payload, compacted, for Claims.JSON.
type tokenClaims struct {
	jwt.RegisteredClaims
	raw json.RawMessage
}

func (c *tokenClaims) UnmarshalJSON(b []byte) error {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return errors.New("payload is not a JSON object")
	}
	if err := json.Unmarshal(b, &c.RegisteredClaims); err != nil {
		return err
	}
	if !bytes.ContainsAny(b, " \t\r\n") {
		// Already compact, as issuers write it: json.Unmarshal has checked
		// it, and b is only lent to UnmarshalJSON.
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
