package testsupport

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// fatalRecorder is a testing.TB whose Fatal ends only the goroutine it is
// called on and keeps the message, so a test can check how a helper fails.
type fatalRecorder struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.msg = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fatalRecorder) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }

// A server that exits before answering PING fails the start at once with
// that news, rather than after the PING deadline, and what it wrote reaches
// Output.
func TestStartRedisReportsAServerThatExits(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed (make deps)")
	}
	var out SyncBuffer
	rec := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		StartRedisWith(rec, RedisOptions{Args: []string{"--no-such-directive", "yes"}, Output: &out})
	}()
	<-done
	if !strings.Contains(rec.msg, "exited before answering PING") {
		t.Fatalf("start failed with %q, want the server's exit", rec.msg)
	}
	if !strings.Contains(out.String(), "no-such-directive") {
		t.Fatalf("the server's output did not reach Output: %q", out.String())
	}
}

// A master killed and started again rejoins the cluster from its
// nodes.conf, and the cluster serves every slot again.
func TestClusterMasterRestarts(t *testing.T) {
	c := StartCluster(t)
	c.Nodes[1].Kill()
	c.Nodes[1].Start()
	for _, a := range c.Addrs {
		waitClusterNode(t, a, nil)
	}
	rdb := c.Client(t)
	if err := rdb.Set(context.Background(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
}
