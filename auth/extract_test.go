package auth

import (
	"testing"
)

func TestExtractToken(t *testing.T) {
	tests := []struct {
		name      string
		authz     string
		query     string
		param     string
		protocols []string
		want      Token
		found     bool
	}{
		{name: "nothing", param: "token"},
		{name: "header", authz: "Bearer abc.def.ghi", want: Token{"abc.def.ghi", SourceHeader}, found: true},
		{name: "header scheme in lower case", authz: "bearer abc", want: Token{"abc", SourceHeader}, found: true},
		{name: "header scheme in upper case", authz: "BEARER abc", want: Token{"abc", SourceHeader}, found: true},
		{name: "header with extra spaces", authz: "  Bearer \t  abc  ", want: Token{"abc", SourceHeader}, found: true},
		{name: "header with b64token padding", authz: "Bearer mF_9.B5f-4.1JqM==", want: Token{"mF_9.B5f-4.1JqM==", SourceHeader}, found: true},
		{name: "header Basic passes through", authz: "Basic dXNlcjpwYXNz", param: "token"},
		{name: "header Bearer without a token", authz: "Bearer", param: "token"},
		{name: "header Bearer and spaces only", authz: "Bearer   ", param: "token"},
		{name: "header scheme glued to the token", authz: "Bearerabc", param: "token"},
		{name: "header with two words", authz: "Bearer abc def", param: "token"},
		{name: "header another scheme starting alike", authz: "Bearers abc", param: "token"},
		{name: "header malformed falls back to query", authz: "Bearer a b", query: "token=q", param: "token",
			want: Token{"q", SourceQuery}, found: true},
		{name: "header first", authz: "Bearer h", query: "token=q", param: "token", protocols: []string{"bearer.p"},
			want: Token{"h", SourceHeader}, found: true},

		{name: "query", query: "room=1&token=abc.def&x=2", param: "token", want: Token{"abc.def", SourceQuery}, found: true},
		{name: "query alone", query: "token=abc", param: "token", want: Token{"abc", SourceQuery}, found: true},
		{name: "query before protocol", query: "token=q", param: "token", protocols: []string{"bearer.p"},
			want: Token{"q", SourceQuery}, found: true},
		{name: "query URL-encoded value", query: "token=a%2Eb%2Bc+d", param: "token", want: Token{"a.b+c d", SourceQuery}, found: true},
		{name: "query URL-encoded key", query: "%74oken=abc", param: "token", want: Token{"abc", SourceQuery}, found: true},
		{name: "query repeated: the first", query: "token=one&token=two", param: "token", want: Token{"one", SourceQuery}, found: true},
		{name: "query repeated: the first non-empty", query: "token=&token&token=two", param: "token", want: Token{"two", SourceQuery}, found: true},
		{name: "query bad escape skipped", query: "token=%zz&token=ok", param: "token", want: Token{"ok", SourceQuery}, found: true},
		{name: "query other param name", query: "token=abc&jwt=xyz", param: "jwt", want: Token{"xyz", SourceQuery}, found: true},
		{name: "query name is a prefix", query: "tokens=abc&atoken=x&token_=y", param: "token"},
		{name: "query array-style name", query: "token[]=abc", param: "token"},
		{name: "query empty value", query: "token=", param: "token"},
		{name: "query no value", query: "token", param: "token"},
		{name: "query with a semicolon is not a separator", query: "a=1;token=abc", param: "token"},
		{name: "query param off", query: "token=abc", param: ""},

		{name: "protocol", protocols: []string{"bearer.abc"}, param: "token", want: Token{"abc", SourceProtocol}, found: true},
		{name: "protocol among others", protocols: []string{"actioncable-v1-json, bearer.abc.def.ghi ,chat"}, param: "token",
			want: Token{"abc.def.ghi", SourceProtocol}, found: true},
		{name: "protocol in a later header line", protocols: []string{"chat", "v2, Bearer.abc"}, param: "token",
			want: Token{"abc", SourceProtocol}, found: true},
		{name: "protocol empty bearer. skipped", protocols: []string{"bearer., bearer.x"}, param: "token",
			want: Token{"x", SourceProtocol}, found: true},
		{name: "protocol only an empty bearer.", protocols: []string{"bearer."}, param: "token"},
		{name: "protocol without the dot", protocols: []string{"bearer", "bearerabc"}, param: "token"},
		{name: "protocol other protocols only", protocols: []string{"graphql-ws, chat"}, param: "token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, found := ExtractToken(tt.authz, tt.query, tt.param, tt.protocols)
			if got != tt.want || found != tt.found {
				t.Errorf("ExtractToken = %+v, %v; want %+v, %v", got, found, tt.want, tt.found)
			}
		})
	}
}

func TestSourceString(t *testing.T) {
	for s, want := range map[Source]string{SourceHeader: "header", SourceQuery: "query", SourceProtocol: "protocol", 0: "none"} {
		if s.String() != want {
			t.Errorf("Source(%d).String() = %q, want %q", s, s.String(), want)
		}
	}
}

func TestExtractTokenAllocations(t *testing.T) {
	protocols := []string{"actioncable-v1-json, bearer.abc"}
	for _, tt := range []struct{ authz, query string }{
		{"Bearer abc.def.ghi", ""},
		{"", "room=1&token=abc.def.ghi"},
		{"Basic x", "room=1"},
	} {
		if n := testing.AllocsPerRun(100, func() { ExtractToken(tt.authz, tt.query, "token", protocols) }); n != 0 {
			t.Errorf("ExtractToken(%q, %q): %v allocations, want 0", tt.authz, tt.query, n)
		}
	}
	if n := testing.AllocsPerRun(100, func() { StripQueryParam("room=1&x=2", "token") }); n != 0 {
		t.Errorf("StripQueryParam without the param: %v allocations, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { StripBearerProtocol("chat, v2") }); n != 0 {
		t.Errorf("StripBearerProtocol without bearer: %v allocations, want 0", n)
	}
}

func TestStripQueryParam(t *testing.T) {
	tests := []struct{ query, param, want string }{
		{"", "token", ""},
		{"token=abc", "token", ""},
		{"token=abc&room=1", "token", "room=1"},
		{"room=1&token=abc", "token", "room=1"},
		{"room=1&token=abc&x=2", "token", "room=1&x=2"},
		{"token=1&token=2&room=1&token=3", "token", "room=1"},
		{"token&room=1", "token", "room=1"},
		{"token=&room=1", "token", "room=1"},
		{"%74oken=abc&room=1", "token", "room=1"},
		{"to%6Ben=abc&to+ken=x", "token", "to+ken=x"},
		{"token=%zz&room=1", "token", "room=1"},
		// The others keep their exact bytes and order.
		{"b=%2F%2f&token=x&a=1+2&c=%E2%9C%93&=&d", "token", "b=%2F%2f&a=1+2&c=%E2%9C%93&=&d"},
		{"a=1&&token=x&b=2", "token", "a=1&&b=2"},
		{"&token=x&b=2", "token", "&b=2"},
		{"a=1&token=x&", "token", "a=1&"},
		{"tokens=1&atoken=2&token[]=3", "token", "tokens=1&atoken=2&token[]=3"},
		{"room=1", "token", "room=1"},
		{"jwt=abc&token=keep", "jwt", "token=keep"},
		{"token=abc", "", "token=abc"},
	}
	for _, tt := range tests {
		if got := StripQueryParam(tt.query, tt.param); got != tt.want {
			t.Errorf("StripQueryParam(%q, %q) = %q, want %q", tt.query, tt.param, got, tt.want)
		}
	}
}

func TestStripBearerProtocol(t *testing.T) {
	tests := []struct{ value, want string }{
		{"", ""},
		{"bearer.abc", ""},
		{"Bearer.abc", ""},
		{"bearer.", ""},
		{"bearer.abc, bearer.def", ""},
		{"actioncable-v1-json, bearer.abc", "actioncable-v1-json"},
		{"bearer.abc,chat", "chat"},
		{"chat,  bearer.abc.def.ghi , v2", "chat, v2"},
		{"chat,,bearer.x", "chat"},
		// Nothing to strip: the value as it came.
		{"chat,v2", "chat,v2"},
		{" chat ,  v2 ", " chat ,  v2 "},
		{"bearer, bearerx", "bearer, bearerx"},
	}
	for _, tt := range tests {
		if got := StripBearerProtocol(tt.value); got != tt.want {
			t.Errorf("StripBearerProtocol(%q) = %q, want %q", tt.value, got, tt.want)
		}
	}
}
