//go:build soak

package e2e

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// soakNodes are the soak's Cablecar nodes: a fixed number of slots, each
// holding the process now serving it, and the list of node URLs in
// rotation, which the clients dial — a load balancer's view: a node leaves
// it when it is killed or told to stop, and joins once it answers and its
// baseline figures are taken.
type soakNodes struct {
	t    *testing.T
	opts CablecarOptions

	mu    sync.Mutex
	slots []*soakNode // the current process of each slot
	all   []*soakNode // every process started, in order
}

// soakNode is one process of one slot.
type soakNode struct {
	name    string // "node1", "node1'", "node1''": slot and restarts
	c       *Cablecar
	base    procStats // right after start, before any client
	up      bool      // in rotation
	stopped bool      // killed or terminated
}

// procStats are the figures of a node that show a leak.
type procStats struct {
	RSS        int64          // bytes, VmRSS
	Goroutines int            // go_goroutines from /metrics
	FDs        int            // entries of /proc/<pid>/fd
	FDKinds    map[string]int // the same, by what they are (fdKind)
}

func (s procStats) String() string {
	return fmt.Sprintf("RSS %.1f MiB, %d goroutines, %d FDs (%s)", float64(s.RSS)/(1<<20), s.Goroutines, s.FDs, counts(s.FDKinds))
}

func newSoakNodes(t *testing.T, count int, opts CablecarOptions) *soakNodes {
	n := &soakNodes{t: t, opts: opts, slots: make([]*soakNode, count)}
	for i := range count {
		n.start(i)
	}
	return n
}

// start runs a new process in slot i, takes its baseline once it is ready
// and puts it in rotation.
func (n *soakNodes) start(i int) *soakNode {
	n.t.Helper()
	name := fmt.Sprintf("node%d", i+1)
	n.mu.Lock()
	if prev := n.slots[i]; prev != nil {
		name = prev.name + "'"
	}
	n.mu.Unlock()
	c := StartCablecar(n.t, n.opts)
	// Ready: the broker is connected and the app answers, so the baseline
	// is a node at rest, not one still starting.
	WaitFor(n.t, 2*time.Minute, name+" /readyz with the broker connected", func() bool {
		if c.AdminStatus("/readyz") != 200 {
			return false
		}
		code, body, err := get(c.admin, c.AdminURL+"/metrics", 2*time.Second)
		if err != nil || code != 200 {
			return false
		}
		v, ok := MetricValue(body, "cablecar_broker_connected")
		return ok && v == 1
	})
	base, err := readProcStats(c)
	if err != nil {
		n.t.Fatalf("%s baseline: %v", name, err)
	}
	node := &soakNode{name: name, c: c, base: base, up: true}
	n.mu.Lock()
	n.slots[i] = node
	n.all = append(n.all, node)
	n.mu.Unlock()
	return node
}

// pick is the URL of a node in rotation, at random; "" when none is.
func (n *soakNodes) pick(rng *rand.Rand) (string, string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var up []*soakNode
	for _, node := range n.slots {
		if node != nil && node.up {
			up = append(up, node)
		}
	}
	if len(up) == 0 {
		return "", ""
	}
	node := up[rng.IntN(len(up))]
	return node.c.URL, node.name
}

// out takes slot i out of rotation and returns its process.
func (n *soakNodes) out(i int) *soakNode {
	n.mu.Lock()
	defer n.mu.Unlock()
	node := n.slots[i]
	node.up = false
	return node
}

// kill is kill -9 of slot i's process.
func (n *soakNodes) kill(i int) *soakNode {
	node := n.out(i)
	node.c.Kill()
	node.stopped = true
	return node
}

// terminate sends SIGTERM to slot i's process and waits until it exits;
// it returns the exit code and how long the exit took.
func (n *soakNodes) terminate(i int, timeout time.Duration) (*soakNode, int, time.Duration, error) {
	node := n.out(i)
	began := time.Now()
	node.c.Signal(syscall.SIGTERM)
	code, err := node.c.Wait(timeout)
	node.stopped = true
	return node, code, time.Since(began), err
}

// survivors are the processes still running.
func (n *soakNodes) survivors() []*soakNode {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*soakNode
	for _, node := range n.slots {
		if node != nil && !node.stopped {
			out = append(out, node)
		}
	}
	return out
}

// every is every process the soak started.
func (n *soakNodes) every() []*soakNode {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.all)
}

// readProcStats reads what the kernel and the node's /metrics say now.
// It never fails the test: it runs inside polls.
func readProcStats(c *Cablecar) (procStats, error) {
	var s procStats
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.PID()))
	if err != nil {
		return s, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return s, fmt.Errorf("%q: %v", line, err)
			}
			s.RSS = kb * 1024
		}
	}
	if s.RSS == 0 {
		return s, errors.New("no VmRSS in /proc status")
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", c.PID()))
	if err != nil {
		return s, err
	}
	s.FDs = len(fds)
	s.FDKinds = fdKinds(c, fds)
	code, body, err := get(c.admin, c.AdminURL+"/metrics", 5*time.Second)
	if err != nil {
		return s, err
	}
	if code != 200 {
		return s, fmt.Errorf("GET /metrics: status %d", code)
	}
	g, ok := MetricValue(body, "go_goroutines")
	if !ok {
		return s, errors.New("no go_goroutines in /metrics")
	}
	s.Goroutines = int(g)
	return s, nil
}

// nodeMetric is a sum from a node's /metrics, or -1 when it cannot be read.
func nodeMetric(c *Cablecar, name string, want ...string) float64 {
	code, body, err := get(c.admin, c.AdminURL+"/metrics", 5*time.Second)
	if err != nil || code != 200 {
		return -1
	}
	v, _ := MetricValue(body, name, want...)
	return v
}

// warnings counts a node's log lines at warn level and above by message:
// what it said went wrong, for the report.
func (node *soakNode) warnings() map[string]int {
	out := map[string]int{}
	for line := range strings.SplitSeq(node.c.Logs(), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		l, ok := parseLogLine(line)
		if !ok {
			out["(not JSON) "+truncate(line, 80)]++
			continue
		}
		switch l.Str("level") {
		case "warn", "error", "fatal", "panic":
			out[l.Str("level")+": "+l.Str("message")]++
		}
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// fdKinds sorts a node's open files by what they are: TCP sockets by their
// far end (redis, app, a client on its listener, the admin listener's, a
// listener) and the rest by kind (pipe, anon_inode, a file…), so that a
// leak names itself.
func fdKinds(c *Cablecar, fds []os.DirEntry) map[string]int {
	pid := c.PID()
	sockets := map[string]string{} // inode → kind
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) < 10 || f[0] == "sl" {
				continue
			}
			local, remote, state, inode := hexPort(f[1]), hexPort(f[2]), f[3], f[9]
			kind := "other socket"
			switch {
			case state == "0A":
				kind = "listener"
			case remote == soakRedisPort:
				kind = "redis"
			case remote == soakAppPort:
				kind = "app"
			case local == portOf(c.Addr):
				kind = "client"
			case local == portOf(c.AdminAddr):
				kind = "admin"
			}
			sockets[inode] = kind
		}
	}
	out := map[string]int{}
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		switch {
		case strings.HasPrefix(target, "socket:["):
			kind, ok := sockets[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")]
			if !ok {
				kind = "other socket"
			}
			out[kind]++
		case strings.HasPrefix(target, "pipe:"):
			out["pipe"]++
		case strings.HasPrefix(target, "anon_inode:"):
			out[target]++
		default:
			out["file"]++
		}
	}
	return out
}

// The ports of the soak's Redis and app, for fdKinds.
var soakRedisPort, soakAppPort int

// hexPort is the port of an address of /proc/net/tcp ("0100007F:A24D").
func hexPort(addr string) int {
	_, port, _ := strings.Cut(addr, ":")
	n, _ := strconv.ParseInt(port, 16, 32)
	return int(n)
}

func portOf(hostport string) int {
	_, port, _ := net.SplitHostPort(hostport)
	n, _ := strconv.Atoi(port)
	return n
}
