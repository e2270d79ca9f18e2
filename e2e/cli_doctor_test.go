package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// doctorFinding is one line of `cablecar doctor -json`.
type doctorFinding struct {
	Check, Status, Found, Fix string
}

// runDoctor runs `cablecar doctor -json` with cfg (merged over a config
// whose upstream is given and whose admin listener nobody runs) and
// returns the exit code and the findings.
func runDoctor(t *testing.T, upstream string, cfg map[string]any, args ...string) (int, []doctorFinding) {
	t.Helper()
	full := map[string]any{
		"listen":   "127.0.0.1:" + strconv.Itoa(FreePort(t)),
		"upstream": upstream,
		"admin":    map[string]any{"listen": "127.0.0.1:" + strconv.Itoa(FreePort(t))},
	}
	mergeConfig(full, cfg)
	path := WriteConfig(t, full)
	code, out, errOut := RunCablecar(t, nil, append([]string{"doctor", "-json", "-config", path}, args...)...)
	var fs []doctorFinding
	if err := json.Unmarshal([]byte(out), &fs); err != nil {
		t.Fatalf("doctor -json printed %q (stderr %q): %v", out, errOut, err)
	}
	return code, fs
}

// finding is the first finding of check whose text holds want, or fails.
func finding(t *testing.T, fs []doctorFinding, check, status, want string) doctorFinding {
	t.Helper()
	for _, f := range fs {
		if f.Check == check && f.Status == status && strings.Contains(f.Found, want) {
			return f
		}
	}
	t.Fatalf("no %s finding %q with %q among:\n%+v", status, check, want, fs)
	return doctorFinding{}
}

// startDoctorApp runs testdata/doctor/<name>.ru under Puma with env.
func startDoctorApp(t *testing.T, name string, env map[string]string) *Puma {
	t.Helper()
	root := RepoRoot(t)
	full := map[string]string{"RUBYLIB": filepath.Join(root, "ruby", "lib")}
	for k, v := range env {
		full[k] = v
	}
	return StartPuma(t, PumaOptions{Rackup: filepath.Join(root, "testdata", "doctor", name+".ru"), Env: full, Threads: "1:4"})
}

// TestDoctorDiagnoses: `cablecar doctor` against real Puma apps built to
// fail each way tells the four cases of the signed test accept apart (the
// app verifies and the secret matches; wrong secret; does not check; not
// the contract at this path), and the app with no secret at all, and
// exits 1 on any problem.
func TestDoctorDiagnoses(t *testing.T) {
	t.Parallel()
	const secret = "doctor-test-secret-0123456789abcdef"
	signed := map[string]any{"callback.secret": secret}
	cases := []struct {
		name, app string
		env       map[string]string
		code      int
		status    string
		want      string
		fix       string
	}{
		{"matches", "gem", map[string]string{"CABLECAR_CALLBACK_SECRET": secret}, 0,
			"ok", "the app verifies signatures and the secret matches", ""},
		{"wrong secret", "gem", map[string]string{"CABLECAR_CALLBACK_SECRET": "another"}, 1,
			"problem", `the app refused: wrong secret: 401 "Cablecar-Signature does not match any secret"`, "same CABLECAR_CALLBACK_SECRET"},
		{"no secret in the app", "gem", nil, 1,
			"problem", "the app has no callback secret", "CABLECAR_CALLBACK_SECRET"},
		{"does not check", "unchecked", nil, 1,
			"problem", "the app does not check signatures", "Cablecar::Middleware"},
		{"not the contract", "plain", nil, 1,
			"problem", "the app is not using the gem or the contract at /ws", "-path"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startDoctorApp(t, tc.app, tc.env)
			code, fs := runDoctor(t, p.Upstream, signed, "-path", "/ws")
			finding(t, fs, "app", "ok", "the app answers at "+p.Upstream)
			f := finding(t, fs, "signature", tc.status, tc.want)
			if !strings.Contains(f.Fix, tc.fix) {
				t.Errorf("the fix %q does not say %q", f.Fix, tc.fix)
			}
			if code != tc.code {
				t.Errorf("exit %d, want %d; findings %+v", code, tc.code, fs)
			}
		})
	}

	t.Run("the gem on a path without a WebSocket", func(t *testing.T) {
		t.Parallel()
		p := startDoctorApp(t, "gem", map[string]string{"CABLECAR_CALLBACK_SECRET": secret})
		code, fs := runDoctor(t, p.Upstream, signed) // -path defaults to /
		finding(t, fs, "signature", "ok", "the app verifies signatures and the secret matches")
		finding(t, fs, "signature", "warn", "no WebSocket on /")
		if code != 0 {
			t.Errorf("exit %d: a warning is not a problem", code)
		}
	})
	t.Run("Cablecar without a secret in front of the gem", func(t *testing.T) {
		t.Parallel()
		p := startDoctorApp(t, "gem", map[string]string{"CABLECAR_CALLBACK_SECRET": secret})
		code, fs := runDoctor(t, p.Upstream, nil, "-path", "/ws")
		finding(t, fs, "signature", "problem", "Cablecar has no callback.secret")
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
	})
}

// TestDoctorDependencies: no app, Redis up or down, the admin listener of
// a running node with the right and a wrong key, and the JWKS fetched.
func TestDoctorDependencies(t *testing.T) {
	t.Parallel()
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/jwks.json" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","use":"sig",` +
			`"x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}`))
	}))
	t.Cleanup(jwks.Close)
	dead := "127.0.0.1:" + strconv.Itoa(FreePort(t))

	t.Run("nothing answers", func(t *testing.T) {
		t.Parallel()
		code, fs := runDoctor(t, "http://"+dead, map[string]any{
			"broker.url":        "redis://" + dead + "/0",
			"auth.jwt.jwks_url": jwks.URL + "/missing.json",
		})
		finding(t, fs, "app", "problem", "nothing answers at http://"+dead)
		finding(t, fs, "broker", "problem", "does not answer PING")
		finding(t, fs, "admin", "warn", "no Cablecar answers")
		finding(t, fs, "jwt", "problem", "answered 404")
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
	})

	t.Run("everything answers", func(t *testing.T) {
		t.Parallel()
		r := StartRedis(t)
		p := StartPuma(t, PumaOptions{})
		const key = "doctor-admin-key"
		cfg := map[string]any{
			"broker.url":        r.URL,
			"admin.api_key":     key,
			"auth.jwt.jwks_url": jwks.URL + "/jwks.json",
		}
		c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: cfg})
		code, out, errOut := RunCablecar(t, nil, "doctor", "-json", "-config", c.ConfigPath, "-path", "/ws/doctor")
		var fs []doctorFinding
		if err := json.Unmarshal([]byte(out), &fs); err != nil {
			t.Fatalf("doctor -json: %q %q: %v", out, errOut, err)
		}
		finding(t, fs, "broker", "ok", "answers PING")
		finding(t, fs, "admin", "ok", "takes this admin.api_key")
		finding(t, fs, "jwt", "ok", "holds 1 signing key")
		// The test app accepts without checking: not this test's point,
		// but doctor must say it (no callback.secret here: a warning).
		finding(t, fs, "signature", "warn", "callbacks are unsigned")
		if code != 0 {
			t.Errorf("exit %d, want 0: %+v", code, fs)
		}

		code, out, _ = RunCablecar(t, []string{"CABLECAR_ADMIN_API_KEY=wrong"}, "doctor", "-config", c.ConfigPath, "-path", "/ws/doctor")
		if code != 1 || !strings.Contains(out, "refused admin.api_key") {
			t.Errorf("a wrong key: exit %d:\n%s", code, out)
		}
	})
}
