package auth

import (
	"bytes"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
)

// FuzzExtractToken checks that no handshake makes ExtractToken panic, that
// a token it finds is really in the source it names, and that once the
// query parameter and bearer.* protocols are stripped no token is left
// there for the app to see.
//
//	go test -run - -fuzz FuzzExtractToken ./auth/
func FuzzExtractToken(f *testing.F) {
	for _, s := range []struct{ authz, query, param, protocols string }{
		{"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "", "token", ""},
		{"bearer\t x ", "token=y", "token", "bearer.z"},
		{"Basic dXNlcjpwYXNz", "room=1&token=a%2Eb+c&token=d", "token", "chat, bearer.p"},
		{"Bearer a b", "%74oken=%zz&to%6ben=v&token", "token", "v1\nBearer.q, bearer."},
		{"", "a=1&&token=&=x&", "jwt", "bearer, bearerx,,"},
		{"Bearer", "token=%", "", "bearer.\xff"},
	} {
		f.Add(s.authz, s.query, s.param, s.protocols)
	}
	f.Fuzz(func(t *testing.T, authz, query, param, protocols string) {
		// One header line per '\n'.
		lines := strings.Split(protocols, "\n")
		tok, found := ExtractToken(authz, query, param, lines)
		if !found {
			if tok != (Token{}) {
				t.Fatalf("not found, but returned %+v", tok)
			}
		} else {
			if tok.Raw == "" {
				t.Fatalf("found an empty token in %v", tok.Source)
			}
			switch tok.Source {
			case SourceHeader:
				if !strings.Contains(authz, tok.Raw) || strings.ContainsAny(tok.Raw, " \t") {
					t.Fatalf("token %q is not a word of Authorization %q", tok.Raw, authz)
				}
			case SourceQuery:
				if !inQuery(query, param, tok.Raw) {
					t.Fatalf("token %q is not a value of %q in %q", tok.Raw, param, query)
				}
			case SourceProtocol:
				if !strings.Contains(strings.ToLower(protocols), strings.ToLower("bearer."+tok.Raw)) {
					t.Fatalf("token %q is not offered as bearer.<token> in %q", tok.Raw, protocols)
				}
			default:
				t.Fatalf("found with source %v", tok.Source)
			}
		}

		stripped := StripQueryParam(query, param)
		if _, found := ExtractToken("", stripped, param, nil); found {
			t.Fatalf("StripQueryParam(%q, %q) = %q still has a token", query, param, stripped)
		}
		if !hasKey(query, param) && stripped != query {
			t.Fatalf("StripQueryParam(%q, %q) = %q changed a query without the param", query, param, stripped)
		}
		if again := StripQueryParam(stripped, param); again != stripped {
			t.Fatalf("StripQueryParam is not idempotent: %q then %q", stripped, again)
		}
		if len(stripped) > len(query) {
			t.Fatalf("StripQueryParam(%q) = %q grew", query, stripped)
		}
		for _, line := range lines {
			s := StripBearerProtocol(line)
			if _, found := ExtractToken("", "", "", []string{s}); found {
				t.Fatalf("StripBearerProtocol(%q) = %q still has a token", line, s)
			}
			for _, e := range strings.Split(s, ",") {
				if strings.HasPrefix(strings.ToLower(strings.Trim(e, " \t")), "bearer.") {
					t.Fatalf("StripBearerProtocol(%q) = %q left a bearer. entry", line, s)
				}
			}
		}
	})
}

// inQuery decodes query on its own, as an app's query parser would.
func inQuery(query, param, value string) bool {
	for _, pair := range strings.Split(query, "&") {
		k, v, _ := strings.Cut(pair, "=")
		dk, err1 := url.QueryUnescape(k)
		dv, err2 := url.QueryUnescape(v)
		if err1 == nil && err2 == nil && dk == param && dv == value {
			return true
		}
	}
	return false
}

func hasKey(query, param string) bool {
	for _, pair := range strings.Split(query, "&") {
		k, _, _ := strings.Cut(pair, "=")
		if dk, err := url.QueryUnescape(k); err == nil && dk == param {
			return true
		}
	}
	return false
}

// FuzzMembers checks the payload scanner that finds the registered claims
// against encoding/json: for any JSON object, each name (unescaped) and
// its last value are what json.Unmarshal into a map reads.
//
//	go test -run - -fuzz FuzzMembers ./auth/
func FuzzMembers(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { } `, `{"sub":"x","exp":1}`, `{"a":{"b":[1,"}",{"c":"]"}]},"d":"\"}"}`,
		`{ "\u0065xp" : -1.5e3 , "aud":[ "a" , null ] ,"x":true,"y":false,"z":null}`,
		`{"exp":1,"exp":"2"}`, `{"k\\":"v\\\\","":""}`, "{\n\t\"n\":\r12}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, obj string) {
		b := bytes.TrimSpace([]byte(obj))
		var want map[string]json.RawMessage
		if len(b) == 0 || b[0] != '{' || json.Unmarshal(b, &want) != nil {
			return
		}
		got := map[string]json.RawMessage{}
		err := members(b, func(name, value []byte) error {
			var k string
			if err := json.Unmarshal(name, &k); err != nil {
				t.Fatalf("name %q is not a JSON string", name)
			}
			got[k] = value
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%q: %d names, encoding/json reads %d", obj, len(got), len(want))
		}
		for k, v := range want {
			if !bytes.Equal(got[k], v) {
				t.Fatalf("%q: %q is %q, encoding/json reads %q", obj, k, got[k], v)
			}
		}
	})
}
