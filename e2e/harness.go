// Package e2e runs the real cablecar binary against real parts: a Rack app
// (testdata/app) under real Puma, and redis-server, each on free loopback
// ports. It may start processes and open sockets on 127.0.0.1; it never
// imports the packages it tests, so what it proves holds for the binary a
// user runs.
//
// The helpers here (StartPuma, StartRedis, StartCablecar, WaitFor…) are the
// shared harness for every later end-to-end test: each one cleans up after
// itself through t.Cleanup and dumps what its process wrote when the test
// fails. Call them, and the methods of what they return, from the test's
// own goroutine: on trouble they stop the test with t.Fatal.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cablecar/cablecar/internal/testsupport"
)

// tools the harness runs. Missing ones fail the run with the one command that
// installs them, rather than skipping: a green run must mean the tests ran.
var tools = []string{"ruby", "puma", "redis-server"}

// Main is what TestMain calls: it checks the tools, runs the tests, and then
// makes sure no process the tests started outlived them.
func Main(m *testing.M) int {
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: %s not installed: run `make deps`\n", strings.Join(missing, ", "))
		return 1
	}
	code := m.Run()
	removeBuildDir()
	if leftovers := leftoverProcesses(); len(leftovers) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: processes outlived the tests (killed now): %s\n", strings.Join(leftovers, "; "))
		if code == 0 {
			code = 1
		}
	}
	return code
}

// requireTool fails the test at once when a tool is missing, for helpers used
// from a package whose TestMain does not call Main.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("e2e: %s not installed: run `make deps`", name)
	}
	return path
}

var ports = struct {
	sync.Mutex
	given map[int]bool
}{given: map[int]bool{}}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that no other caller in this process has been given, so parallel tests do
// not race each other for the same port.
func FreePort(t testing.TB) int {
	t.Helper()
	ports.Lock()
	defer ports.Unlock()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("FreePort: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !ports.given[port] {
			ports.given[port] = true
			return port
		}
	}
	t.Fatal("FreePort: no unused port after 50 tries")
	return 0
}

// WaitFor polls cond (testsupport.Poll: a short growing pause between
// tries) until it returns true; past timeout it fails the test saying what
// it waited for.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testsupport.Eventually(t, what, timeout, cond)
}

// poll is WaitFor without the test: it reports whether cond came true.
func poll(timeout time.Duration, cond func() bool) bool { return testsupport.Poll(timeout, cond) }

// RepoRoot is the directory holding go.mod, found upwards from the test's
// working directory (the package directory under `go test`).
func RepoRoot(t testing.TB) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatalf("RepoRoot: %v", err)
	}
	return root
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 20 {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("no go.mod above the working directory")
}

// ShortTempDir is a temporary directory with a short path, for Unix sockets
// (at most 107 bytes of path), removed when the test ends. t.TempDir embeds
// the test name and can be too long.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cc")
	if err != nil {
		t.Fatalf("ShortTempDir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Output collects what a process writes; safe for concurrent use.
type Output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

// String is everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// process is one child the harness started and will reap.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the child has been reaped
	err  error         // from cmd.Wait, valid after done
}

var children = struct {
	sync.Mutex
	all []*process
}{}

// startProcess starts cmd in its own process group, so stopping it also
// stops anything it forked, and asks the kernel to kill it should the test
// binary die first (a panic or a -timeout), so no run leaves a server behind.
func startProcess(t testing.TB, name string, cmd *exec.Cmd) *process {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	children.Lock()
	children.all = append(children.all, p)
	children.Unlock()
	return p
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits up to timeout for the child to exit.
func (p *process) wait(timeout time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// exitCode is the child's exit status, or -1 when a signal ended it.
func (p *process) exitCode() int {
	return p.cmd.ProcessState.ExitCode()
}

func (p *process) signalGroup(sig syscall.Signal) {
	if !p.exited() {
		// The group may be gone already; nothing to do then.
		_ = syscall.Kill(-p.pid(), sig)
	}
}

// stop sends sig to the group, waits up to grace, then kills the group.
// It reports whether the child was reaped.
func (p *process) stop(sig syscall.Signal, grace time.Duration) bool {
	p.signalGroup(sig)
	if p.wait(grace) {
		p.signalGroup(syscall.SIGKILL) // anything it forked
		return true
	}
	p.signalGroup(syscall.SIGKILL)
	return p.wait(10 * time.Second)
}

// dumpOnFailure logs out under the process's name if the test has failed by
// the time it ends. Register it before the cleanup that stops the process,
// so it runs after it and shows the last words too.
func dumpOnFailure(t testing.TB, name string, out *Output) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s--- end of %s ---", name, out.String(), name)
		}
	})
}

// leftoverProcesses kills and names every child of this process still
// alive, and every process left in a group the harness created.
func leftoverProcesses() []string {
	children.Lock()
	groups := map[int]string{}
	for _, p := range children.all {
		groups[p.pid()] = p.name
	}
	children.Unlock()

	self := os.Getpid()
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp …; comm may hold spaces, so cut at ')'.
		s := string(stat)
		end := strings.LastIndexByte(s, ')')
		if end < 0 {
			continue
		}
		fields := strings.Fields(s[end+1:])
		if len(fields) < 3 {
			continue
		}
		state := fields[0]
		ppid, _ := strconv.Atoi(fields[1])
		pgrp, _ := strconv.Atoi(fields[2])
		_, ours := groups[pgrp]
		if ppid != self && !ours {
			continue
		}
		if state == "Z" && ppid != self {
			continue // someone else's zombie to reap
		}
		// The go toolchain runs build children while a test builds the
		// binary; by now none should be left, whatever they are.
		comm := s[strings.IndexByte(s, '(')+1 : end]
		found = append(found, fmt.Sprintf("%s (pid %d, state %s)", comm, pid, state))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return found
}

// get is a GET with a deadline, returning status and body; it returns an
// error rather than failing so it can sit inside WaitFor conditions.
func get(client *http.Client, url string, timeout time.Duration) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(body), err
}
