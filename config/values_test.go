package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"1048576", 1 << 20, true},
		{"100B", 100, true},
		{"512KiB", 512 << 10, true},
		{"1MiB", 1 << 20, true},
		{"1 MiB", 1 << 20, true},
		{"1mib", 1 << 20, true},
		{"2GiB", 2 << 30, true},
		{"1MB", 0, false},
		{"1M", 0, false},
		{"1.5MiB", 0, false},
		{"-1", 0, false},
		{"MiB", 0, false},
		{"", 0, false},
		{"99999999999GiB", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 1: "1", 1000: "1000", 1024: "1KiB", 1536: "1536", 1 << 20: "1MiB", 3 << 30: "3GiB"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %s, want %s", n, got, want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	tests := map[time.Duration]string{
		5 * time.Second:         "5s",
		60 * time.Second:        "60s",
		120 * time.Second:       "120s",
		10 * time.Minute:        "10m",
		90 * time.Minute:        "90m",
		2 * time.Hour:           "2h",
		250 * time.Millisecond:  "250ms",
		1500 * time.Millisecond: "1500ms",
		1500 * time.Microsecond: "1.5ms",
	}
	for d, want := range tests {
		got := formatDuration(d)
		if got != want {
			t.Errorf("formatDuration(%v) = %s, want %s", d, got, want)
		}
		if back, err := parseDuration(got, false); err != nil || back != d {
			t.Errorf("parseDuration(%s) = %v, %v; want %v", got, back, err, d)
		}
	}
}

func TestParseUpstream(t *testing.T) {
	tests := []struct {
		in      string
		want    Upstream
		wantErr string // a part of the error; "" when it must parse
	}{
		{"http://127.0.0.1:3001", Upstream{"tcp", "127.0.0.1:3001"}, ""},
		{"http://127.0.0.1:3001/", Upstream{"tcp", "127.0.0.1:3001"}, ""},
		{"HTTP://app:80", Upstream{"tcp", "app:80"}, ""},
		{"http://[::1]:3001", Upstream{"tcp", "[::1]:3001"}, ""},
		{"unix:/run/puma.sock", Upstream{"unix", "/run/puma.sock"}, ""},
		{"unix:///run/puma.sock", Upstream{"unix", "/run/puma.sock"}, ""},
		{"unix:tmp/puma.sock", Upstream{"unix", "tmp/puma.sock"}, ""},
		{"https://app:3001", Upstream{}, `unknown scheme "https"`},
		{"ws://app:3001", Upstream{}, `unknown scheme "ws"`},
		{"tcp://app:3001", Upstream{}, `unknown scheme "tcp"`},
		{"http://app", Upstream{}, "has no port"},
		{"http://app:0", Upstream{}, "bad port"},
		{"http://app:99999", Upstream{}, "bad port"},
		{"http://:3001", Upstream{}, "bad host"},
		{"http://u:p@app:3001", Upstream{}, "user or password"},
		{"http://app:3001/x", Upstream{}, "has a path"},
		{"http://app:3001?x=1", Upstream{}, "query"},
		{"app:3001", Upstream{}, `did you mean "http://app:3001"`},
		{"/run/puma.sock", Upstream{}, `did you mean "unix:/run/puma.sock"`},
		{"unix:", Upstream{}, "no socket path"},
		{"unix://run/puma.sock", Upstream{}, "names a host"},
		{"puma", Upstream{}, "is not an upstream"},
	}
	for _, tt := range tests {
		got, err := parseUpstream(tt.in)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("parseUpstream(%q): %v", tt.in, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("parseUpstream(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
		case got != tt.want:
			t.Errorf("parseUpstream(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if tt.wantErr == "" {
			if back, err := parseUpstream(got.String()); err != nil || back != got {
				t.Errorf("String() of %q = %q does not parse back: %+v, %v", tt.in, got.String(), back, err)
			}
		}
	}
}

func TestCheckListen(t *testing.T) {
	good := []string{":3000", "0.0.0.0:3000", "127.0.0.1:0", "[::]:3000", "[::1]:3000", "localhost:3000", "app-1.internal:65535"}
	for _, s := range good {
		if err := checkListen(s); err != nil {
			t.Errorf("checkListen(%q): %v", s, err)
		}
	}
	bad := map[string]string{
		"":           "is empty",
		"3000":       `did you mean ":3000"`,
		"localhost":  "is not host:port",
		"::1:3000":   "is not host:port",
		":http":      "bad port",
		":65536":     "bad port",
		":-1":        "bad port",
		"bad host:1": "bad host",
		"-x:1":       "bad host",
	}
	for s, want := range bad {
		if err := checkListen(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("checkListen(%q) = %v, want an error containing %q", s, err, want)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	good := map[string]string{
		"10.0.0.0/8":    "10.0.0.0/8",
		"192.0.2.7":     "192.0.2.7/32",
		"::1":           "::1/128",
		"2001:db8::/32": "2001:db8::/32",
	}
	for in, want := range good {
		got, err := parsePrefix(in)
		if err != nil || got != netip.MustParsePrefix(want) {
			t.Errorf("parsePrefix(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"10.1.2.3/8", "10.0.0.0/33", "fe80::1%eth0", "example.com", "10.0.0/8"} {
		if _, err := parsePrefix(in); err == nil {
			t.Errorf("parsePrefix(%q) succeeded", in)
		}
	}
}

func TestCheckOrigin(t *testing.T) {
	for _, s := range []string{"*", "https://example.com", "http://localhost:3000", "https://[::1]:8443"} {
		if err := checkOrigin(s); err != nil {
			t.Errorf("checkOrigin(%q): %v", s, err)
		}
	}
	for _, s := range []string{"example.com", "https://example.com/", "https://example.com/app", "https://*.example.com", "https://u@example.com", "**"} {
		if err := checkOrigin(s); err == nil {
			t.Errorf("checkOrigin(%q) succeeded", s)
		}
	}
}

func TestMaskURL(t *testing.T) {
	tests := map[string]string{
		"":                                    "",
		"redis://redis:6379/0":                "redis://redis:6379/0",
		"redis://:pw@redis:6379/0":            "redis://:********@redis:6379/0",
		"rediss://user:pw@redis:6379":         "rediss://user:********@redis:6379",
		"redis://user@redis:6379":             "redis://user@redis:6379",
		"redis://user:p@ss/w@redis:6379":      "redis://user:********@redis:6379",
		"redis+sentinel://:pw@s1,s2/mymaster": "redis+sentinel://:********@s1,s2/mymaster",
		"redis+sentinel://s1:26379?master_name=m&password=pw&sentinel_password=spw&addr=s2:26379":         "redis+sentinel://s1:26379?master_name=m&password=********&sentinel_password=********&addr=s2:26379",
		"redis+sentinel://u:x@s1?Password=pw":                                                             "redis+sentinel://u:********@s1?Password=********",
		"https://keys.example/jwks.json?api_key=k1&x=1;token=t2&Access_Token=t3&client_name=c":            "https://keys.example/jwks.json?api_key=********&x=1;token=********&Access_Token=********&client_name=c",
		"https://u:p@keys.example/jwks?KEY=k&secret=s&sig=x&signature=y&Authorization=z&api%5Fkey=w&flag": "https://u:********@keys.example/jwks?KEY=********&secret=********&sig=********&signature=********&Authorization=********&api%5Fkey=********&flag",
		"not a url?token=x": "not a url?token=x",
	}
	for in, want := range tests {
		if got := maskURL(in); got != want {
			t.Errorf("maskURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSuggest(t *testing.T) {
	keys := knownKeys()
	tests := []struct {
		name string
		want []string
	}{
		{"listn", []string{"listen"}},
		{"Listen", []string{"listen"}},
		{"proxy.conect_timeout", []string{"proxy.connect_timeout"}},
		{"websocket.pingInterval", []string{"websocket.ping_interval"}},
		{"web_socket", []string{"websocket"}},
		{"api_key", []string{"admin.api_key"}},
		{"proxy.frobnicate", nil},
		{"timeouts", nil},
	}
	for _, tt := range tests {
		tail := tt.name[strings.LastIndex(tt.name, ".")+1:]
		if got := suggest(tt.name, tail, keys, "."); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("suggest(%q) = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestEditDistance(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{{"", "", 0}, {"a", "", 1}, {"kitten", "sitting", 3}, {"listen", "listne", 2}, {"same", "same", 0}}
	for _, tt := range tests {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestSameListener(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{":3000", ":3000", true},
		{"0.0.0.0:3000", ":3000", true},
		{"127.0.0.1:3000", ":3000", true},
		{"127.0.0.1:3000", "127.0.0.1:3000", true},
		{"127.0.0.1:3000", "10.0.0.1:3000", false},
		{"127.0.0.1:9394", ":3000", false},
		{":0", ":0", false},
		{"", ":3000", false},
	}
	for _, tt := range tests {
		if got := sameListener(tt.a, tt.b); got != tt.want {
			t.Errorf("sameListener(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

// FuzzFile feeds arbitrary files to Parse: it must never panic, its errors
// must be one line, and whatever it accepts must survive Effective.
func FuzzFile(f *testing.F) {
	if b, err := os.ReadFile("../sidecar.yaml"); err == nil {
		f.Add(string(b))
	}
	f.Add("proxy: {connect_timeout: 5s, response_timeout: 60s}\n")
	f.Add("websocket:\n  rate_limit: {per_second: 0}\n  allowed_origins: ['*']\n")
	f.Add("callback: {secret: [a, b]}\nauth: {jwt: {required: true, hmac_secret: k}}\n")
	f.Add("a: &x {b: *x}\n")
	f.Add("upstream: unix:/run/puma.sock\nlisten: '[::1]:0'\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, body string) {
		path := filepath.Join(dir, "fuzz.yaml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c, _, err := Parse([]string{"-config", path}, nil, nil)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		if err := os.WriteFile(path, []byte(c.Effective()), 0o600); err != nil {
			t.Fatal(err)
		}
		back, _, err := Parse([]string{"-config", path}, nil, nil)
		if err != nil {
			t.Fatalf("Effective() does not load back: %v\n%s", err, c.Effective())
		}
		want := *c
		maskSecrets(&want)
		if !reflect.DeepEqual(back, &want) {
			t.Fatalf("round trip changed the config:\n%s", c.Effective())
		}
	})
}
