package actioncable

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzMembersAgree: what the map-free scan reads (members.go) is exactly
// what encoding/json reads into a map — every member's raw text, the last
// of a key given twice, and each plain string — so a command or an
// identifier means the same whichever way it was read.
func FuzzMembersAgree(f *testing.F) {
	for _, s := range []string{
		`{"command":"subscribe","identifier":"{\"channel\":\"ChatChannel\"}"}`,
		`{"command":"message","identifier":"x","data":"{\"action\":\"a\"}"}`,
		` { "command" : "pong" , "x" : [1, {"a":"}"}], "y": null } `,
		`{"command":"a","command":"b"}`,
		`{"comm\u0061nd":"subscribe","identifier":"x"}`,
		`{"channel":"Turbo::StreamsChannel","signed_stream_name":"ImEi--00"}`,
		`{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9}`,
		`{"k":"\xff"}`, `{"k":"é"}`, `{"k":"a\u0000b"}`, `{}`, `[]`, `null`, `{`, `"x"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var ms [maxMembers]member
		n, ok := scanMembers(data, &ms)
		var m map[string]json.RawMessage
		slowErr := json.Unmarshal(data, &m)
		if !ok {
			return // the slow way decides
		}
		if slowErr != nil || m == nil {
			t.Fatalf("%q: scanned, but encoding/json says %v (%v)", data, slowErr, m)
		}
		last := map[string][]byte{}
		for _, mb := range ms[:n] {
			last[string(mb.key)] = mb.value
		}
		if len(last) != len(m) {
			t.Fatalf("%q: scanned %d keys, encoding/json %d", data, len(last), len(m))
		}
		for k, v := range m {
			if !bytes.Equal(last[k], v) {
				t.Fatalf("%q: key %q scanned %q, encoding/json %q", data, k, last[k], v)
			}
			if s, ok := plainString(v); ok {
				var want string
				if err := json.Unmarshal(v, &want); err != nil || want != s {
					t.Fatalf("%q: plain string %q, encoding/json %q (%v)", v, s, want, err)
				}
			}
		}
	})
}

// The common subscribe is read without the map: a few small allocations
// (the strings it returns, the identifier's unescaping), not the 19 (1.2
// KiB) the map took.
func TestParseCommandAllocations(t *testing.T) {
	frame := []byte(`{"command":"subscribe","identifier":"{\"channel\":\"Turbo::StreamsChannel\",\"signed_stream_name\":\"ImJlbmNoIg==--79e7\"}"}`)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := ParseCommand(frame); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 6 {
		t.Fatalf("ParseCommand of a subscribe: %v allocations, want at most 6", allocs)
	}
}
