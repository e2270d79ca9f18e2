package registry

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

// roundTrip encodes rec as the writer does and reads it back as a reaper
// does.
func roundTrip(t *testing.T, rec ConnRecord) ConnRecord {
	t.Helper()
	b := appendRecord(nil, &rec)
	if !json.Valid(b) {
		t.Fatalf("invalid JSON: %q", b)
	}
	got, err := decodeRecord("c_fallback", b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	return got
}

func TestRecordJSONRoundTrip(t *testing.T) {
	for _, rec := range []ConnRecord{
		{ID: "c_1", Path: "/"},
		{ID: "c_2", Path: "/cable?a=1&b=<2>", Headers: [][2]string{{"Cookie", "a=\"b\"; c=\\d"}}, State: "\u2028\t\x01",
			Channels: []string{"a", "b:c"}, Claims: json.RawMessage(`{"sub":"u","n":[1,2]}`)},
		{ID: "c_3", Path: "/p", Claims: json.RawMessage(`not json`)},
		{ID: "c_4", Path: "/p", Claims: validClaims(json.RawMessage(`not json`))},
		{ID: "c_5", Path: "/p", Claims: validClaims(json.RawMessage(`{ "sub" : "u" }`))},
	} {
		got := roundTrip(t, rec)
		if !json.Valid(rec.Claims) {
			rec.Claims = nil
		}
		if fmt.Sprint(got) != fmt.Sprint(rec) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, rec)
		}
	}
	// Paths and cookies keep their & < > as they are: Cablecar alone
	// reads the record.
	if b := appendRecord(nil, &ConnRecord{ID: "c_1", Path: "/?a=1&b=<2>"}); !strings.Contains(string(b), "&b=<2>") {
		t.Errorf("HTML-escaped: %s", b)
	}
	if _, err := decodeRecord("c_1", []byte(`{"id":"c_1"}`)); err == nil {
		t.Error("a record without a path was read")
	}
	if rec, err := decodeRecord("c_9", []byte(`{"path":"/"}`)); err != nil || rec.ID != "c_9" {
		t.Errorf("a record without its id: %+v %v, want the field's id", rec, err)
	}
}

// A handed-over close event survives the record's JSON.
func TestRecordJSONWithClose(t *testing.T) {
	for _, c := range []CloseEvent{
		{N: 9007199254740991, Code: 1012, By: "shutdown"},
		{N: 3, Code: 4000, Reason: "bye \"now\"\u2028", By: "app"},
	} {
		got := roundTrip(t, ConnRecord{ID: "c_1", Path: "/", State: "s", Close: &c})
		if got.Close == nil || *got.Close != c || got.State != "s" {
			t.Errorf("round trip of %+v: %+v", c, got.Close)
		}
	}
}

func FuzzRecordJSON(f *testing.F) {
	f.Add("c_1", "/cable?room=1", "Cookie", "a=b", "state", "room:1", uint64(3), "bye")
	f.Add("c_\xff", "/\"\\", "X", "\x00\u2028", "\xed\xa0\x80", "", uint64(0), "")
	f.Fuzz(func(t *testing.T, id, path, hk, hv, state, ch string, n uint64, reason string) {
		if path == "" {
			path = "/" // a record without a path is refused on reading
		}
		rec := ConnRecord{ID: id, Path: path, Headers: [][2]string{{hk, hv}}, State: state, Channels: []string{ch}}
		if n > 0 {
			rec.Close = &CloseEvent{N: n, Code: 1012, Reason: reason, By: "shutdown"}
		}
		got := roundTrip(t, rec)
		fix := validUTF8
		wantID := fix(id)
		if id == "" {
			wantID = "c_fallback"
		}
		if got.ID != wantID || got.Path != fix(path) || got.Headers[0] != [2]string{fix(hk), fix(hv)} ||
			got.State != fix(state) || got.Channels[0] != fix(ch) {
			t.Errorf("round trip %+v → %+v", rec, got)
		}
		if n > 0 && (got.Close == nil || got.Close.N != n || got.Close.Reason != fix(reason)) {
			t.Errorf("close event %+v → %+v", rec.Close, got.Close)
		}
	})
}

// validUTF8 replaces each byte of s that is not UTF-8 with U+FFFD, as
// encoding/json does.
func validUTF8(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}
