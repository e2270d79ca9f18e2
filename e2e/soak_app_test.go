//go:build soak

package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// soakApp is testdata/soakapp under real Puma, in cluster mode so the app
// can use both cores, on a fixed port so it comes back where the nodes
// expect it. StartPuma is not used: the soak restarts the app while two
// nodes hold a backlog of retried events for it, and the moment it listens
// it is flooded, so a readiness check of /health within StartPuma's 20 s
// would fail for reasons the soak is about, not the harness.
type soakApp struct {
	t        *testing.T
	addr     string // 127.0.0.1:port
	upstream string // http://addr, for the nodes
	env      []string
	out      *Output
	proc     *process
}

func newSoakApp(t *testing.T, record, control string) *soakApp {
	t.Helper()
	requireTool(t, "ruby")
	a := &soakApp{
		t:   t,
		out: &Output{},
		env: append(os.Environ(), "RACK_ENV=production", "SOAK_RECORD="+record, "SOAK_CONTROL="+control),
	}
	a.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
	a.upstream = "http://" + a.addr
	dumpOnFailure(t, "soak app "+a.addr, a.out)
	t.Cleanup(func() {
		if a.proc != nil {
			a.proc.stop(syscall.SIGKILL, 0)
		}
	})
	a.start()
	return a
}

// start runs Puma and waits until both its workers have booted and it
// accepts connections. Not until /health answers: a Puma whose threads
// are all busy with the nodes' keep-alive connections leaves a new
// connection in the kernel's backlog, and the nodes, holding a minute of
// retried events and reconnecting clients, keep it that busy for minutes.
func (a *soakApp) start() {
	a.t.Helper()
	puma := requireTool(a.t, "puma")
	rackup := filepath.Join(RepoRoot(a.t), "testdata", "soakapp", "config.ru")
	cmd := exec.Command(puma, "--no-config", "-w", "2", "-t", "8:16", "-b", "tcp://"+a.addr, "-e", "production", rackup)
	cmd.Dir = filepath.Dir(rackup)
	cmd.Env = a.env
	cmd.Stdout, cmd.Stderr = a.out, a.out
	since := len(a.out.String())
	a.proc = startProcess(a.t, "puma (soak app)", cmd)
	proc := a.proc
	var exited bool
	WaitFor(a.t, time.Minute, "the soak app's two workers to boot and listen on "+a.addr, func() bool {
		if proc.exited() {
			exited = true
			return true
		}
		if strings.Count(a.out.String()[since:], "booted in") < 2 {
			return false
		}
		conn, err := net.DialTimeout("tcp", a.addr, time.Second)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	})
	if exited {
		a.t.Fatalf("the soak app exited before it was ready: %v", proc.err)
	}
}

// kill stops the app at once, workers and all, as a crash would.
func (a *soakApp) kill() {
	a.t.Helper()
	if !a.proc.stop(syscall.SIGKILL, 0) {
		a.t.Fatalf("the soak app on %s did not exit", a.addr)
	}
	a.proc = nil
}
