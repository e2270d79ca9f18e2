package e2e

import (
	"strings"
	"testing"
)

// TestConfigErrors: invalid configuration stops start-up with exit code 2
// and one line on stderr naming the key and the value.
func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		config map[string]any
		env    []string
		want   []string // all in the one line
	}{
		{"bad duration", map[string]any{"proxy.response_timeout": "banana"}, nil, []string{"proxy.response_timeout", "banana"}},
		{"bad address", map[string]any{"listen": "not-an-address"}, nil, []string{"listen", "not-an-address"}},
		{"unknown upstream scheme", map[string]any{"upstream": "ftp://127.0.0.1:1"}, nil, []string{"upstream", "ftp://127.0.0.1:1"}},
		{"unknown key", map[string]any{"proxy.respone_timeout": "1s"}, nil, []string{"proxy.respone_timeout", "response_timeout"}},
		{"bad environment value", nil, []string{"CABLECAR_PROXY_CONNECT_TIMEOUT=5x"}, []string{"proxy.connect_timeout", "5x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := harnessConfig("127.0.0.1:1", "127.0.0.1:2", "http://127.0.0.1:3")
			mergeConfig(cfg, tc.config)
			path := WriteConfig(t, cfg)
			code, _, stderr := RunCablecar(t, tc.env, "-config", path)
			if code != 2 {
				t.Fatalf("exit code %d, want 2; stderr:\n%s", code, stderr)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if len(lines) != 1 {
				t.Fatalf("stderr has %d lines, want 1:\n%s", len(lines), stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(lines[0], w) {
					t.Errorf("stderr %q does not mention %q", lines[0], w)
				}
			}
		})
	}
}

// TestConfigCheck: -check validates, prints the effective config and exits
// 0, with secrets masked.
func TestConfigCheck(t *testing.T) {
	t.Parallel()
	cfg := harnessConfig("127.0.0.1:1", "127.0.0.1:2", "http://127.0.0.1:3")
	mergeConfig(cfg, map[string]any{"admin.api_key": "SECRETADMINKEY"})
	path := WriteConfig(t, cfg)
	code, stdout, stderr := RunCablecar(t, nil, "-check", "-config", path)
	if code != 0 {
		t.Fatalf("exit code %d, want 0; stderr:\n%s", code, stderr)
	}
	out := stdout + stderr
	if !strings.Contains(out, "http://127.0.0.1:3") {
		t.Errorf("-check output does not show the upstream:\n%s", out)
	}
	if strings.Contains(out, "SECRETADMINKEY") {
		t.Errorf("-check output shows admin.api_key:\n%s", out)
	}
}
