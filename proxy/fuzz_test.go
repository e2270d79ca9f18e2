package proxy

import (
	"bytes"
	"testing"
)

// FuzzRedactQuery checks, for any query string a client may send, that the
// logged form keeps every pair in place and never shows the value of a
// sensitive parameter, whether it follows a '&' or a ';'.
//
//	go test -run - -fuzz FuzzRedactQuery ./proxy/
func FuzzRedactQuery(f *testing.F) {
	for _, s := range []string{"", "a=1", "token=x&a=2", "%74oken=x", "a&&b=", "=x", "api%5Fkey=1&x=%zz", "x=1;token=y;z=2&w", ";;=;t=1"} {
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
			// The first piece, split at ';', with a sensitive name: all of
			// the pair after its '=' is filtered.
			cut := -1
			offset := 0
			for _, piece := range bytes.Split(pair, []byte{';'}) {
				if name, _, hasValue := bytes.Cut(piece, []byte{'='}); hasValue && isSensitive(name, extra) {
					cut = offset + len(name) + 1
					break
				}
				offset += len(piece) + 1
			}
			if cut < 0 {
				if !bytes.Equal(got[i], pair) {
					t.Fatalf("pair %q changed to %q", pair, got[i])
				}
				continue
			}
			if want := append(bytes.Clone(pair[:cut]), filtered...); !bytes.Equal(got[i], want) {
				t.Fatalf("pair %q with a sensitive value logged as %q, want %q", pair, got[i], want)
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
