package proxy

import (
	"bytes"
	"testing"
)

// FuzzRedactQuery checks, for any query string a client may send, that the
// logged form keeps every pair in place and never shows the value of a
// sensitive parameter.
//
//	go test -run - -fuzz FuzzRedactQuery ./proxy/
func FuzzRedactQuery(f *testing.F) {
	for _, s := range []string{"", "a=1", "token=x&a=2", "%74oken=x", "a&&b=", "=x", "api%5Fkey=1&x=%zz"} {
		f.Add(s)
	}
	extra := sensitiveSet([]string{"t"})
	f.Fuzz(func(t *testing.T, q string) {
		out := redactQuery([]byte(q), extra, nil)
		in, got := bytes.Split([]byte(q), []byte{'&'}), bytes.Split(out, []byte{'&'})
		if len(in) != len(got) {
			t.Fatalf("pairs %d → %d: %q → %q", len(in), len(got), q, out)
		}
		for i, pair := range in {
			name, _, hasValue := bytes.Cut(pair, []byte{'='})
			switch {
			case hasValue && isSensitive(name, extra):
				if want := append(append(append([]byte{}, name...), '='), filtered...); !bytes.Equal(got[i], want) {
					t.Fatalf("sensitive pair %q logged as %q", pair, got[i])
				}
			default:
				if !bytes.Equal(got[i], pair) {
					t.Fatalf("pair %q changed to %q", pair, got[i])
				}
			}
		}
	})
}

// FuzzRequestID checks that an incoming X-Request-Id is kept only when it is
// safe to log and echo, and that a generated one always is.
func FuzzRequestID(f *testing.F) {
	for _, s := range []string{"", "abc-123", "a b", "x\r\nSet-Cookie: y", "ü", "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, id []byte) {
		if validRequestID(id) {
			if len(id) > 200 || bytes.ContainsAny(id, " \t\r\n\"\\") {
				t.Fatalf("kept unsafe id %q", id)
			}
		}
		if gen := newRequestID(nil); !validRequestID(gen) || len(gen) != 36 {
			t.Fatalf("generated id %q is not valid", gen)
		}
	})
}
