package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

const tolerance = 5 * time.Minute

var (
	now  = time.Unix(1700000000, 0)
	body = []byte(`{"connection":{"id":"c_1"},"events":[{"id":"c_1:1","type":"open"}]}`)
)

func TestSignVerify(t *testing.T) {
	s := NewSigner([]string{"s3cret"})
	if !s.Enabled() {
		t.Fatal("a signer with a secret is not enabled")
	}
	h := s.Sign(now, body)
	if err := s.Verify(h, body, now, tolerance); err != nil {
		t.Errorf("Verify(%q): %v", h, err)
	}
	// The accept GET signs its request line, connection id and claims in
	// place of a body.
	get := AcceptPayload("/chat?room=1", "c_1", `{"sub":"42"}`)
	if err := s.Verify(s.Sign(now, get), get, now, tolerance); err != nil {
		t.Errorf("Verify of a GET: %v", err)
	}
	if err := s.Verify(s.Sign(now, nil), nil, now, tolerance); err != nil {
		t.Errorf("Verify of an empty payload: %v", err)
	}
}

// The app computes the signature on its own, in Ruby, from SPEC §6 alone:
// this pins the exact bytes.
func TestSignFormat(t *testing.T) {
	h := NewSigner([]string{"s3cret"}).Sign(now, body)
	m := hmac.New(sha256.New, []byte("s3cret"))
	m.Write([]byte("1700000000." + string(body)))
	if want := "t=1700000000,v1=" + hex.EncodeToString(m.Sum(nil)); h != want {
		t.Errorf("Sign = %q, want %q", h, want)
	}
}

// The accept's payload is pinned byte for byte: the gem builds it on its
// own from SPEC §6.
func TestAcceptPayload(t *testing.T) {
	for _, tt := range []struct{ uri, id, claims, want string }{
		{"/chat?room=1", "c_1", `{"sub":"42"}`, "GET /chat?room=1\nc_1\n{\"sub\":\"42\"}"},
		{"/", "c_2", "", "GET /\nc_2\n"},
	} {
		if got := string(AcceptPayload(tt.uri, tt.id, tt.claims)); got != tt.want {
			t.Errorf("AcceptPayload(%q, %q, %q) = %q, want %q", tt.uri, tt.id, tt.claims, got, tt.want)
		}
		if got := string(AcceptPayload([]byte(tt.uri), []byte(tt.id), []byte(tt.claims))); got != tt.want {
			t.Errorf("AcceptPayload of bytes = %q, want %q", got, tt.want)
		}
	}
}

// A captured accept signature does not pass for other claims, for no
// claims, or for another connection.
func TestAcceptSignatureCoversIDAndClaims(t *testing.T) {
	s := NewSigner([]string{"s3cret"})
	h := s.Sign(now, AcceptPayload("/chat", "c_1", `{"sub":"7"}`))
	if err := s.Verify(h, AcceptPayload("/chat", "c_1", `{"sub":"7"}`), now, tolerance); err != nil {
		t.Fatalf("Verify of the accept as signed: %v", err)
	}
	for _, forged := range [][3]string{
		{"/chat", "c_1", `{"sub":"42"}`},
		{"/chat", "c_1", ""},
		{"/chat", "c_2", `{"sub":"7"}`},
		{"/chat\nc_1", "", `{"sub":"7"}`},
	} {
		if err := s.Verify(h, AcceptPayload(forged[0], forged[1], forged[2]), now, tolerance); !errors.Is(err, ErrBadSignature) {
			t.Errorf("Verify of %q = %v, want ErrBadSignature", forged, err)
		}
	}
	unclaimed := s.Sign(now, AcceptPayload("/chat", "c_1", ""))
	if err := s.Verify(unclaimed, AcceptPayload("/chat", "c_1", `{"sub":"42"}`), now, tolerance); !errors.Is(err, ErrBadSignature) {
		t.Errorf("claims added to an accept signed without any: %v, want ErrBadSignature", err)
	}
}

func TestSignRotation(t *testing.T) {
	both := NewSigner([]string{"old", "", "new"})
	h := both.Sign(now, body)
	if n := strings.Count(h, "v1="); n != 2 {
		t.Fatalf("Sign with two secrets = %q: %d v1 entries, want 2", h, n)
	}
	// The app may hold either secret while it rotates.
	for _, sec := range []string{"old", "new"} {
		if err := NewSigner([]string{sec}).Verify(h, body, now, tolerance); err != nil {
			t.Errorf("Verify with %q only: %v", sec, err)
		}
	}
	if err := NewSigner([]string{"other"}).Verify(h, body, now, tolerance); !errors.Is(err, ErrBadSignature) {
		t.Errorf("Verify with a third secret: %v, want ErrBadSignature", err)
	}
}

func TestVerifyRefuses(t *testing.T) {
	s := NewSigner([]string{"s3cret"})
	good := s.Sign(now, body)
	ts := "t=" + strconv.FormatInt(now.Unix(), 10)
	tests := []struct {
		name    string
		header  string
		payload []byte
		at      time.Time
		want    error
	}{
		{"forged payload", good, []byte(`{"connection":{"id":"c_2"}}`), now, ErrBadSignature},
		{"payload with one more byte", good, append(append([]byte(nil), body...), ' '), now, ErrBadSignature},
		{"other secret", NewSigner([]string{"guess"}).Sign(now, body), body, now, ErrBadSignature},
		{"timestamp swapped", strings.Replace(good, ts, "t=1700000001", 1), body, now, ErrBadSignature},
		{"stale", good, body, now.Add(tolerance + time.Second), ErrStale},
		{"from the future", good, body, now.Add(-tolerance - time.Second), ErrStale},
		{"no v1", ts, body, now, ErrNoSignature},
		{"v1 not hex", ts + ",v1=zz", body, now, ErrNoSignature},
		{"other version only", ts + ",v0=" + strings.Repeat("ab", 32), body, now, ErrNoSignature},
		{"no timestamp", good[strings.IndexByte(good, ',')+1:], body, now, ErrNoSignature},
		{"timestamp not a number", strings.Replace(good, ts, "t=soon", 1), body, now, ErrNoSignature},
		{"empty", "", body, now, ErrNoSignature},
		{"truncated mac", good[:len(good)-2], body, now, ErrBadSignature},
	}
	for _, tt := range tests {
		if err := s.Verify(tt.header, tt.payload, tt.at, tolerance); !errors.Is(err, tt.want) {
			t.Errorf("%s: Verify(%q) = %v, want %v", tt.name, tt.header, err, tt.want)
		}
	}
	// Just inside the tolerance, either way, still passes.
	for _, at := range []time.Time{now.Add(tolerance), now.Add(-tolerance)} {
		if err := s.Verify(good, body, at, tolerance); err != nil {
			t.Errorf("Verify %v from the signing time: %v", at.Sub(now), err)
		}
	}
}

func TestSignerDisabled(t *testing.T) {
	for _, secrets := range [][]string{nil, {}, {""}} {
		s := NewSigner(secrets)
		if s.Enabled() {
			t.Errorf("NewSigner(%q) is enabled", secrets)
		}
		if h := s.Sign(now, body); h != "" {
			t.Errorf("NewSigner(%q).Sign = %q, want \"\"", secrets, h)
		}
	}
}

// Verify reads a header from the network (the app side, and the e2e tests
// that stand in for it), so no header may make it panic.
func FuzzVerify(f *testing.F) {
	s := NewSigner([]string{"s3cret", "other"})
	good := s.Sign(now, body)
	for _, seed := range []string{
		good, "", ",", "=", "t=", "v1=", "t=,v1=", "t=1700000000", good + "," + good,
		"t=-9223372036854775808,v1=00", "t=9223372036854775807,v1=00", "t=+1700000000,v1=ab",
		" t = 1 , v1 = ab ", "t=1700000000,v1=" + strings.Repeat("f", 1000), "\x00t=\xff,v1=\x80",
	} {
		f.Add(seed, body)
	}
	f.Fuzz(func(t *testing.T, header string, payload []byte) {
		err := s.Verify(header, payload, now, tolerance)
		if err == nil && header != good && !strings.Contains(header, "v1=") {
			t.Errorf("Verify(%q) passed without a v1 entry", header)
		}
	})
}
