package jsontext

import (
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// AppendString must agree with encoding/json on what a string decodes
// to, invalid UTF-8 included.
func TestAppendString(t *testing.T) {
	for _, s := range []string{
		"", "plain", "\x00\x1f\x7f", "quote\" back\\slash", "\u2028\u2029", "é日本🙂",
		"\xff", "a\xc3", "\xed\xa0\x80", "x\xe2\x82", "\r\n\t\b\f",
	} {
		got := AppendString(nil, s)
		var dec string
		if err := json.Unmarshal(got, &dec); err != nil {
			t.Errorf("%q → %s: %v", s, got, err)
			continue
		}
		want, _ := json.Marshal(s)
		var wantDec string
		_ = json.Unmarshal(want, &wantDec)
		if dec != wantDec {
			t.Errorf("%q → %s decodes to %q, encoding/json to %q", s, got, dec, wantDec)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a\"b", "\xff\xfe", "\u2028", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := AppendString(nil, s)
		var dec string
		if err := json.Unmarshal(got, &dec); err != nil {
			t.Fatalf("%q → %s: %v", s, got, err)
		}
		if utf8.ValidString(s) && dec != s {
			t.Fatalf("%q → %s decodes to %q", s, got, dec)
		}
	})
}
