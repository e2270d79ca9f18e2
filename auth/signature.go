package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// SignatureHeader is the request header that carries a callback's signature.
const SignatureHeader = "Cablecar-Signature"

// Signer signs the requests Cablecar sends the app (SPEC §6):
// "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<payload>">", with one v1
// entry per secret so that the app can rotate its secret without downtime.
// The payload is the request body for a POST and AcceptPayload for the
// accept GET. A Signer with no secrets signs nothing.
type Signer struct {
	secrets [][]byte
}

// NewSigner returns a signer for the given secrets; empty entries are
// ignored.
func NewSigner(secrets []string) *Signer {
	s := &Signer{}
	for _, sec := range secrets {
		if sec != "" {
			s.secrets = append(s.secrets, []byte(sec))
		}
	}
	return s
}

// Enabled reports whether requests are signed at all.
func (s *Signer) Enabled() bool { return len(s.secrets) > 0 }

// Sign returns the header value for payload at time t, or "" when no
// secret is configured.
func (s *Signer) Sign(t time.Time, payload []byte) string {
	if !s.Enabled() {
		return ""
	}
	ts := strconv.FormatInt(t.Unix(), 10)
	var b strings.Builder
	b.Grow(len("t=,") + len(ts) + len(s.secrets)*(len(",v1=")+2*sha256.Size))
	b.WriteString("t=")
	b.WriteString(ts)
	for _, sec := range s.secrets {
		b.WriteString(",v1=")
		b.WriteString(hex.EncodeToString(mac(sec, ts, payload)))
	}
	return b.String()
}

// AcceptPayload is what the accept GET's signature covers in place of a
// body (SPEC §6):
//
//	GET <path and query>\n<Cablecar-Connection-Id>\n<Cablecar-Claims or empty>
//
// The connection id and the claims are in it because the app trusts them
// as Cablecar's word: a request to the app that carries them (a client
// that found a way past the header stripping, or someone replaying a
// captured accept at the app) must not pass with values of its own
// choosing. A header value holds no newline, so the three parts cannot be
// shifted into one another.
func AcceptPayload[T string | []byte](pathAndQuery, connID, claims T) []byte {
	b := make([]byte, 0, len("GET \n\n")+len(pathAndQuery)+len(connID)+len(claims))
	b = append(b, "GET "...)
	b = append(b, pathAndQuery...)
	b = append(b, '\n')
	b = append(b, connID...)
	b = append(b, '\n')
	return append(b, claims...)
}

func mac(secret []byte, ts string, payload []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(payload)
	return m.Sum(nil)
}

// Errors of Verify.
var (
	ErrNoSignature  = errors.New("no signature")
	ErrBadSignature = errors.New("signature does not match")
	ErrStale        = errors.New("signature timestamp outside the tolerance")
)

// Verify checks a header value made by Sign against payload, as the app
// side does (the Ruby gem mirrors it; tests use it): any v1 entry matching
// any of the secrets passes, compared in constant time, and t must be
// within tolerance of now.
func (s *Signer) Verify(header string, payload []byte, now time.Time, tolerance time.Duration) error {
	if header == "" {
		return ErrNoSignature
	}
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrNoSignature
	}
	if d := now.Sub(time.Unix(t, 0)); d > tolerance || d < -tolerance {
		return ErrStale
	}
	for _, sec := range s.secrets {
		want := mac(sec, ts, payload)
		for _, got := range sigs {
			if hmac.Equal(want, got) {
				return nil
			}
		}
	}
	return ErrBadSignature
}
