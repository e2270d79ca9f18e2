package actioncable

import "testing"

func TestParseProtocol(t *testing.T) {
	tests := []struct {
		name string
		ext  bool
		want Protocol
		ok   bool
	}{
		{"actioncable-v1-json", false, V1, true},
		{"actioncable-v1-json", true, V1, true},
		{"actioncable-v1-ext-json", true, Ext, true},
		{"actioncable-v1-ext-json", false, 0, false}, // not spoken before §10
		{"actioncable-unsupported", true, 0, false},
		{"ActionCable-v1-json", true, 0, false}, // names are case-sensitive
		{"", true, 0, false},
	}
	for _, tt := range tests {
		got, ok := ParseProtocol(tt.name, tt.ext)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseProtocol(%q, ext %v) = %v, %v; want %v, %v", tt.name, tt.ext, got, ok, tt.want, tt.ok)
		}
		if ok && got.String() != tt.name {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), tt.name)
		}
	}
}

// The §9 refusal form only for clients that offered nothing but
// ActionCable protocols, one of them spoken here.
func TestRefusalProtocol(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		ext    bool
		want   Protocol // 0: no refusal form
	}{
		{"rails client", []string{"actioncable-v1-json, actioncable-unsupported"}, false, V1},
		{"rails client, no spaces", []string{"actioncable-v1-json,actioncable-unsupported"}, false, V1},
		{"two header lines", []string{"actioncable-unsupported", "actioncable-v1-json"}, false, V1},
		{"anycable ext, ext spoken", []string{"actioncable-v1-ext-json"}, true, Ext},
		{"anycable ext, ext not spoken yet", []string{"actioncable-v1-ext-json"}, false, 0},
		{"client order wins", []string{"actioncable-v1-ext-json, actioncable-v1-json"}, true, Ext},
		{"client order wins, v1 first", []string{"actioncable-v1-json, actioncable-v1-ext-json"}, true, V1},
		{"token entry is no offer", []string{"actioncable-v1-json, bearer.eyJhbGciOi, actioncable-unsupported"}, false, V1},
		{"token only", []string{"bearer.eyJhbGciOi"}, false, 0},
		{"another protocol too", []string{"actioncable-v1-json, graphql-ws"}, false, 0},
		{"another protocol on another line", []string{"actioncable-v1-json", "chat"}, false, 0},
		{"only unsupported", []string{"actioncable-unsupported"}, false, 0},
		{"nothing offered", nil, false, 0},
		{"empty header", []string{""}, false, 0},
		{"empty entries and tabs", []string{" ,\tactioncable-v1-json\t, "}, false, V1},
		{"case matters", []string{"ActionCable-v1-json"}, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := RefusalProtocol(tt.values, tt.ext)
			if got != tt.want || ok != (tt.want != 0) {
				t.Errorf("RefusalProtocol(%q, ext %v) = %v, %v; want %v", tt.values, tt.ext, got, ok, tt.want)
			}
		})
	}
}
