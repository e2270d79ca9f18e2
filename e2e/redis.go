package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Redis is a redis-server on 127.0.0.1, with no persistence, for one test.
type Redis struct {
	Addr string // 127.0.0.1:port
	URL  string // redis://127.0.0.1:port, the value for broker.url

	t    testing.TB
	port int
	dir  string
	out  *Output
	proc *process
}

// StartRedis starts redis-server on a free port and waits until it answers
// PING. It is stopped when the test ends.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	requireTool(t, "redis-server")
	port := FreePort(t)
	r := &Redis{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		t:    t,
		port: port,
		dir:  t.TempDir(),
		out:  &Output{},
	}
	r.URL = "redis://" + r.Addr
	dumpOnFailure(t, "redis-server "+r.Addr, r.out)
	t.Cleanup(func() {
		if r.proc != nil {
			r.proc.stop(syscall.SIGKILL, 0)
		}
	})
	r.start()
	return r
}

func (r *Redis) start() {
	r.t.Helper()
	cmd := exec.Command("redis-server",
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(r.port),
		"--save", "",
		"--appendonly", "no",
		"--dir", r.dir,
		"--daemonize", "no",
		"--loglevel", "warning",
	)
	cmd.Stdout, cmd.Stderr = r.out, r.out
	r.proc = startProcess(r.t, "redis-server", cmd)
	proc := r.proc
	var exited bool
	WaitFor(r.t, 10*time.Second, "redis-server to answer PING on "+r.Addr, func() bool {
		if proc.exited() {
			exited = true
			return true
		}
		return r.Ping() == nil
	})
	if exited {
		r.t.Fatalf("redis-server exited before answering PING: %v", proc.err)
	}
}

// Ping sends PING on a fresh connection and reports what went wrong, if
// anything.
func (r *Redis) Ping() error {
	conn, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Stop kills the server at once, as a crash would, and waits until it is
// gone; connections to it break.
func (r *Redis) Stop() {
	r.t.Helper()
	if r.proc == nil {
		return
	}
	if !r.proc.stop(syscall.SIGKILL, 0) {
		r.t.Fatalf("redis-server on %s did not exit", r.Addr)
	}
	r.proc = nil
}

// Restart stops the server if it runs and starts a new one on the same
// port, empty, waiting until it answers PING.
func (r *Redis) Restart() {
	r.t.Helper()
	r.Stop()
	r.start()
}
