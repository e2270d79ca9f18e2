package testsupport

import (
	"context"
	"io"
	"net"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a redis-server on a free loopback port, without persistence,
// killed when the test ends. Kill then Start (same port, empty) is a
// Redis restart.
type Redis struct {
	t    testing.TB
	Addr string // host:port
	args []string
	out  io.Writer
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd has been reaped
}

// RedisOptions tunes StartRedisWith; the zero value is what StartRedis
// does.
type RedisOptions struct {
	// Args are extra redis-server arguments, after the defaults (loopback,
	// the port, no persistence, a temporary directory, warnings only in
	// the log), so they may override them.
	Args []string
	// Port is the port to listen on; 0 picks a free one.
	Port int
	// Output receives the server's stdout and stderr, on every Start;
	// nil discards them.
	Output io.Writer
}

// StartRedis starts a redis-server with extra arguments, or skips the
// test when none is installed (make deps installs it).
func StartRedis(t testing.TB, extra ...string) *Redis {
	t.Helper()
	return StartRedisWith(t, RedisOptions{Args: extra})
}

// StartRedisWith starts a redis-server as o says, or skips the test when
// none is installed, and returns once it answers PING.
func StartRedisWith(t testing.TB, o RedisOptions) *Redis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed: these tests run against a real one (make deps)")
	}
	port := o.Port
	if port == 0 {
		port = freePort(t)
	}
	s := &Redis{t: t, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), out: o.Output}
	s.args = append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--dir", t.TempDir(), "--daemonize", "no",
		"--loglevel", "warning"}, o.Args...)
	t.Cleanup(s.Kill)
	s.Start()
	return s
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// URL is the server's redis:// URL.
func (s *Redis) URL() string { return "redis://" + s.Addr }

// Start starts the server (again, empty, after Kill) and returns once it
// answers PING. A server that exits first (a bad argument, the port taken)
// fails the test at once, with its exit status.
func (s *Redis) Start() {
	s.t.Helper()
	cmd := exec.Command("redis-server", s.args...)
	if s.out != nil {
		cmd.Stdout, cmd.Stderr = s.out, s.out
	}
	// Its own process group, so Kill also takes anything it forked; and
	// the kernel kills it should the test binary die first (a panic, a
	// -timeout), so no run leaves a server behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// A forked child holding the output pipe must not hang Wait.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	s.cmd, s.done = cmd, done

	rdb := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer rdb.Close()
	exited := false
	Eventually(s.t, "redis-server on "+s.Addr+" to answer", 10*time.Second, func() bool {
		select {
		case <-done:
			exited = true
			return true
		default:
		}
		return rdb.Ping(context.Background()).Err() == nil
	})
	if exited {
		s.cmd = nil
		s.t.Fatalf("redis-server on %s exited before answering PING: %v", s.Addr, waitErr)
	}
}

// Kill stops the server at once, as kill -9 would, and returns once it is
// gone.
func (s *Redis) Kill() {
	if s.cmd == nil {
		return
	}
	select {
	case <-s.done:
	default:
		// The group may be gone already; nothing to do then.
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	s.cmd = nil
}

// Client returns a client of the server, closed when the test ends.
func (s *Redis) Client(t testing.TB) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}
