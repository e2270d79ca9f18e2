package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binEnv names a prebuilt binary to test instead of building one.
const binEnv = "CABLECAR_E2E_BIN"

var build struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// CablecarBinary is the path of the binary under test: $CABLECAR_E2E_BIN if
// set, else one built from this module on first use, once per test run, with
// -race when the tests themselves run with -race (a race inside the binary
// then fails the test that provoked it).
func CablecarBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(binEnv); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			t.Fatalf("%s: %v", binEnv, err)
		}
		return abs
	}
	build.once.Do(func() {
		// Nothing in here may stop the test: the error is kept and every
		// caller reports it.
		var root string
		if root, build.err = repoRoot(); build.err != nil {
			return
		}
		if build.dir, build.err = os.MkdirTemp("", "cablecar-e2e-bin"); build.err != nil {
			return
		}
		bin := filepath.Join(build.dir, "cablecar")
		args := []string{"build", "-o", bin}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "github.com/cablecar/cablecar")
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
		build.path = bin
	})
	if build.err != nil {
		t.Fatalf("building cablecar: %v", build.err)
	}
	return build.path
}

func removeBuildDir() {
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
}

// CablecarOptions says how to run the binary.
type CablecarOptions struct {
	// Upstream is the app: Puma.Upstream, or any http:// or unix: value.
	Upstream string
	// Config is merged over the harness's config. Keys may be nested maps
	// or dotted ("proxy.response_timeout": "1s"); a nil value removes the
	// key so the binary's default applies. Values are written as YAML
	// scalars (strings for durations: "2s").
	Config map[string]any
	// Env is added to the binary's environment, which otherwise holds no
	// CABLECAR_ variable.
	Env []string
	// Args are added after -config FILE.
	Args []string
}

// Cablecar is the binary running with a temp config on free loopback ports.
type Cablecar struct {
	URL        string // http://127.0.0.1:port, the proxy
	Addr       string // 127.0.0.1:port
	AdminURL   string // http://127.0.0.1:port, the admin listener
	AdminAddr  string
	ConfigPath string

	t      testing.TB
	proc   *process
	stderr *Output
	stdout *Output
	admin  *http.Client
}

// harnessConfig is what every started binary gets unless a test says
// otherwise: timeouts short enough for tests, everything logged as JSON.
func harnessConfig(listen, admin, upstream string) map[string]any {
	return map[string]any{
		"listen":           listen,
		"upstream":         upstream,
		"shutdown_timeout": "10s",
		"proxy": map[string]any{
			"connect_timeout":  "2s",
			"response_timeout": "10s",
		},
		"admin": map[string]any{"listen": admin},
		"log":   map[string]any{"level": "debug", "format": "json"},
	}
}

// StartCablecar writes a config, starts the binary and waits until its
// /healthz answers. The binary is killed when the test ends, and the test
// fails if it reported a data race.
func StartCablecar(t testing.TB, opts CablecarOptions) *Cablecar {
	t.Helper()
	bin := CablecarBinary(t)
	c := &Cablecar{
		t:      t,
		stderr: &Output{},
		stdout: &Output{},
		admin:  &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second},
	}
	c.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	c.AdminAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	c.URL = "http://" + c.Addr
	c.AdminURL = "http://" + c.AdminAddr

	cfg := harnessConfig(c.Addr, c.AdminAddr, opts.Upstream)
	mergeConfig(cfg, opts.Config)
	// A test that starts a node again on the ports of one it stopped
	// names them in Config; the fields follow.
	if addr, ok := cfg["listen"].(string); ok && addr != c.Addr {
		c.Addr, c.URL = addr, "http://"+addr
	}
	if admin, ok := cfg["admin"].(map[string]any); ok {
		if addr, ok := admin["listen"].(string); ok && addr != "" && addr != c.AdminAddr {
			c.AdminAddr, c.AdminURL = addr, "http://"+addr
		}
	}
	c.ConfigPath = WriteConfig(t, cfg)

	cmd := exec.Command(bin, append([]string{"-config", c.ConfigPath}, opts.Args...)...)
	cmd.Env = append(cleanEnv(), opts.Env...)
	cmd.Stdout, cmd.Stderr = c.stdout, c.stderr
	dumpOnFailure(t, "cablecar "+c.Addr, c.stderr)
	c.proc = startProcess(t, "cablecar", cmd)
	proc := c.proc
	t.Cleanup(func() {
		proc.stop(syscall.SIGKILL, 0)
		if strings.Contains(c.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("cablecar reported a data race (see its output)")
		}
	})

	var exited bool
	WaitFor(t, 20*time.Second, "cablecar /healthz on "+c.AdminAddr, func() bool {
		if proc.exited() {
			exited = true
			return true
		}
		code, _, err := get(c.admin, c.AdminURL+"/healthz", time.Second)
		return err == nil && code == 200
	})
	if exited {
		t.Fatalf("cablecar exited with code %d before /healthz answered:\n%s", proc.exitCode(), c.stderr.String())
	}
	return c
}

// WriteConfig writes cfg to a temp file and returns its path. It is written
// as JSON, which is YAML too, so the harness needs no YAML library.
func WriteConfig(t testing.TB, cfg map[string]any) string {
	t.Helper()
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatalf("WriteConfig: %v", err)
	}
	path := filepath.Join(t.TempDir(), "cablecar.yaml")
	if err := os.WriteFile(path, append(data, '\n'), 0o600); err != nil {
		t.Fatalf("WriteConfig: %v", err)
	}
	return path
}

// mergeConfig sets every key of extra in dst, descending into nested maps
// and splitting dotted keys.
func mergeConfig(dst, extra map[string]any) {
	for _, key := range slices.Sorted(maps.Keys(extra)) {
		value := extra[key]
		parts := strings.Split(key, ".")
		m := dst
		for _, part := range parts[:len(parts)-1] {
			sub, ok := m[part].(map[string]any)
			if !ok {
				sub = map[string]any{}
				m[part] = sub
			}
			m = sub
		}
		last := parts[len(parts)-1]
		switch v := value.(type) {
		case nil:
			delete(m, last)
		case map[string]any:
			sub, ok := m[last].(map[string]any)
			if !ok {
				sub = map[string]any{}
				m[last] = sub
			}
			mergeConfig(sub, v)
		default:
			m[last] = v
		}
	}
}

// cleanEnv is this process's environment without CABLECAR_ variables, so
// neither a developer's shell nor the harness's own settings reach the
// binary unasked (it refuses unknown CABLECAR_ keys).
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CABLECAR_") {
			env = append(env, kv)
		}
	}
	return env
}

// PID is the binary's process id.
func (c *Cablecar) PID() int { return c.proc.pid() }

// Logs is everything the binary has written to stderr so far.
func (c *Cablecar) Logs() string { return c.stderr.String() }

// Stdout is everything the binary has written to stdout so far.
func (c *Cablecar) Stdout() string { return c.stdout.String() }

// Signal sends sig to the binary (not to its process group).
func (c *Cablecar) Signal(sig syscall.Signal) {
	c.t.Helper()
	if err := c.proc.cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("signal %v to cablecar: %v", sig, err)
	}
}

// Exited reports whether the binary has exited.
func (c *Cablecar) Exited() bool { return c.proc.exited() }

// Wait waits up to timeout for the binary to exit and returns its exit code.
// It returns an error if it is still running, or if a signal ended it.
func (c *Cablecar) Wait(timeout time.Duration) (int, error) {
	if !c.proc.wait(timeout) {
		return 0, fmt.Errorf("cablecar still running after %s", timeout)
	}
	code := c.proc.exitCode()
	if code < 0 {
		return code, fmt.Errorf("cablecar ended by a signal: %v", c.proc.err)
	}
	return code, nil
}

// Kill stops the binary at once.
func (c *Cablecar) Kill() { c.proc.stop(syscall.SIGKILL, 0) }

// PeakRSS is the binary's peak resident set size in bytes (VmHWM): the most
// memory it has held at any moment since it started.
func (c *Cablecar) PeakRSS() int64 {
	c.t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.PID()))
	if err != nil {
		c.t.Fatalf("PeakRSS: %v", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				c.t.Fatalf("PeakRSS: %q: %v", line, err)
			}
			return kb * 1024
		}
	}
	c.t.Fatal("PeakRSS: no VmHWM in /proc status")
	return 0
}

// Admin GETs path from the admin listener and returns status and body.
func (c *Cablecar) Admin(path string) (int, string) {
	c.t.Helper()
	code, body, err := get(c.admin, c.AdminURL+path, 5*time.Second)
	if err != nil {
		c.t.Fatalf("GET %s from the admin listener: %v", path, err)
	}
	return code, body
}

// AdminStatus is the status of GET path on the admin listener, or 0 if the
// request failed; for WaitFor conditions.
func (c *Cablecar) AdminStatus(path string) int {
	code, _, err := get(c.admin, c.AdminURL+path, 2*time.Second)
	if err != nil {
		return 0
	}
	return code
}

// Metrics is the text of GET /metrics.
func (c *Cablecar) Metrics() string {
	c.t.Helper()
	code, body := c.Admin("/metrics")
	if code != 200 {
		c.t.Fatalf("GET /metrics: status %d: %s", code, body)
	}
	return body
}

// Metric is the sum of the samples of name (exact, e.g. a histogram's
// name_count) whose labels include every want ("code=2xx"); 0 if none.
func (c *Cablecar) Metric(name string, want ...string) float64 {
	c.t.Helper()
	v, _ := MetricValue(c.Metrics(), name, want...)
	return v
}

// LogLine is one JSON log line.
type LogLine map[string]any

// Str is the field as a string ("" if absent or not a string).
func (l LogLine) Str(key string) string {
	s, _ := l[key].(string)
	return s
}

// Num is the field as a number, and whether it is one.
func (l LogLine) Num(key string) (float64, bool) {
	f, ok := l[key].(float64)
	return f, ok
}

// LogLines parses the JSON lines the binary has written to stderr so far.
// A line that is not JSON fails the test: with format json every line must
// be.
func (c *Cablecar) LogLines() []LogLine {
	c.t.Helper()
	var lines []LogLine
	sc := bufio.NewScanner(strings.NewReader(c.Logs()))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		var l LogLine
		if err := json.Unmarshal([]byte(text), &l); err != nil {
			c.t.Fatalf("log line is not JSON: %q", text)
		}
		lines = append(lines, l)
	}
	return lines
}

// AccessLogs are the access-log lines (message "request") so far.
func (c *Cablecar) AccessLogs() []LogLine {
	c.t.Helper()
	var out []LogLine
	for _, l := range c.LogLines() {
		if l.Str("message") == "request" {
			out = append(out, l)
		}
	}
	return out
}

// WaitLog waits until a log line satisfies match and returns the first that
// does.
func (c *Cablecar) WaitLog(timeout time.Duration, what string, match func(LogLine) bool) LogLine {
	c.t.Helper()
	var found LogLine
	WaitFor(c.t, timeout, what, func() bool {
		for _, l := range c.LogLines() {
			if match(l) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

// RunCablecarOnce runs the binary with args until it exits (at most 20 s)
// and returns its exit code and stderr; for start-up failures.
func RunCablecarOnce(t testing.TB, args ...string) (int, string) {
	t.Helper()
	code, _, stderr := RunCablecar(t, nil, args...)
	return code, stderr
}

// RunCablecar is RunCablecarOnce with extra environment, returning stdout
// too.
func RunCablecar(t testing.TB, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	bin := CablecarBinary(t)
	var outBuf, errBuf Output
	cmd := exec.Command(bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	p := startProcess(t, "cablecar (once)", cmd)
	if !p.wait(20 * time.Second) {
		p.stop(syscall.SIGKILL, 0)
		t.Fatalf("cablecar %s did not exit within 20s; stderr:\n%s", strings.Join(args, " "), errBuf.String())
	}
	var exitErr *exec.ExitError
	if p.err != nil && !errors.As(p.err, &exitErr) {
		t.Fatalf("cablecar %s: %v", strings.Join(args, " "), p.err)
	}
	return p.exitCode(), outBuf.String(), errBuf.String()
}

// MetricValue sums the samples of the metric called name in Prometheus text
// exposition whose labels include every want (written key=value, no quotes),
// and reports whether any sample matched.
func MetricValue(text, name string, want ...string) (float64, bool) {
	var sum float64
	var found bool
	for line := range strings.SplitSeq(text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		metric, labels, value, ok := parseSample(line)
		if !ok || metric != name {
			continue
		}
		matches := true
		for _, w := range want {
			k, v, _ := strings.Cut(w, "=")
			if got, ok := labels[k]; !ok || got != v {
				matches = false
				break
			}
		}
		if matches {
			sum += value
			found = true
		}
	}
	return sum, found
}

// parseSample splits `name{a="1",b="2"} 3.5 [timestamp]`.
func parseSample(line string) (string, map[string]string, float64, bool) {
	labels := map[string]string{}
	var name, rest string
	if i := strings.IndexAny(line, "{ "); i < 0 {
		return "", nil, 0, false
	} else if line[i] == ' ' {
		name, rest = line[:i], line[i+1:]
	} else {
		name = line[:i]
		s := line[i+1:]
		for {
			s = strings.TrimLeft(s, ", ")
			if strings.HasPrefix(s, "}") {
				rest = s[1:]
				break
			}
			eq := strings.Index(s, `="`)
			if eq < 0 {
				return "", nil, 0, false
			}
			key := s[:eq]
			s = s[eq+2:]
			val, after, ok := unquote(s)
			if !ok {
				return "", nil, 0, false
			}
			s = after
			labels[key] = val
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", nil, 0, false
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return "", nil, 0, false
	}
	return name, labels, v, true
}

// unquote reads a label value up to its closing quote (the opening one
// already consumed) and returns it with the rest of the line.
func unquote(s string) (string, string, bool) {
	var val strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			return val.String(), s[i+1:], true
		case c == '\\' && i+1 < len(s):
			i++
			if s[i] == 'n' {
				val.WriteByte('\n')
			} else {
				val.WriteByte(s[i])
			}
		default:
			val.WriteByte(c)
		}
	}
	return "", "", false
}
