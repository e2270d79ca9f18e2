//go:build soak

package e2e

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The chaos soak (`make soak`, docs/soak.md): two Cablecar nodes (the real
// binary), a real redis-server, and testdata/soakapp under real Puma, with a
// crowd of clients connecting, chatting and leaving at random while the
// soak kills a node (kill -9) and restarts it, restarts Redis, makes the app
// answer 503 in bursts, takes the app away altogether, and restarts each
// node in turn with SIGTERM. Then every client leaves, and the soak checks,
// from the app's own record, what Cablecar promises an app (SPEC §3, §5):
//
//   - every connection got exactly one close event, after dedupe by event
//     id (0 lost, 0 doubled);
//   - no event arrived out of order (event numbers increase, the client's
//     messages arrive in the order sent; duplicates are allowed);
//   - the nodes still running are back near their baseline: goroutines,
//     open files, resident memory.
//
// It is behind the soak build tag so that `go test ./...` never runs it:
// it takes minutes and most of a small machine.

// soakConfig is the soak's shape, from SOAK_* environment variables.
type soakConfig struct {
	Duration     time.Duration // SOAK_DURATION: clients chat and faults happen for this long (5m)
	Clients      int           // SOAK_CLIENTS: concurrent users (2000)
	AppOutage    time.Duration // SOAK_APP_OUTAGE: how long the app is away (60s, at most a fifth of the duration unless set)
	MessageEvery time.Duration // SOAK_MESSAGE_EVERY: mean gap between one client's messages (10s)
	Lifetime     time.Duration // SOAK_LIFETIME: mean life of one connection before its client leaves (30s)
	LeaseTTL     time.Duration // SOAK_LEASE_TTL: broker.lease_ttl of the nodes (3s)
	Settle       time.Duration // SOAK_SETTLE: the longest wait for the last close events once clients left (2m)
}

func (c soakConfig) rooms() int { return max(1, c.Clients/10) }

func soakConfigFromEnv(t *testing.T) soakConfig {
	t.Helper()
	c := soakConfig{
		Duration:     soakDuration(t, "SOAK_DURATION", 5*time.Minute),
		Clients:      2000,
		MessageEvery: soakDuration(t, "SOAK_MESSAGE_EVERY", 10*time.Second),
		Lifetime:     soakDuration(t, "SOAK_LIFETIME", 30*time.Second),
		LeaseTTL:     soakDuration(t, "SOAK_LEASE_TTL", 3*time.Second),
		Settle:       soakDuration(t, "SOAK_SETTLE", 2*time.Minute),
	}
	// The 60 s outage; a short soak gets a fifth of its length, so
	// that a smoke run still has time to chat after the app comes back.
	c.AppOutage = soakDuration(t, "SOAK_APP_OUTAGE", min(60*time.Second, c.Duration/5))
	if v := os.Getenv("SOAK_CLIENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 5000 {
			t.Fatalf("SOAK_CLIENTS=%q: want 1–5000 (each client is a socket at both ends)", v)
		}
		c.Clients = n
	}
	switch {
	case c.Duration < 30*time.Second || c.Duration > 2*time.Hour:
		t.Fatalf("SOAK_DURATION=%v: want 30s–2h", c.Duration)
	case c.AppOutage <= 0 || c.AppOutage > c.Duration/2:
		t.Fatalf("SOAK_APP_OUTAGE=%v: want more than 0 and at most half of SOAK_DURATION", c.AppOutage)
	}
	// Ramp, faults, leaving, settling and the baseline check must fit in
	// go test's -timeout.
	if dl, ok := t.Deadline(); ok && time.Until(dl) < c.Duration+c.Settle+5*time.Minute {
		t.Fatalf("-timeout leaves %v; the soak needs SOAK_DURATION + SOAK_SETTLE + 5m = %v",
			time.Until(dl).Round(time.Second), c.Duration+c.Settle+5*time.Minute)
	}
	return c
}

func soakDuration(t *testing.T, key string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive Go duration (45s, 5m)", key, v)
	}
	return d
}

// soak is one run.
type soak struct {
	t       *testing.T
	cfg     soakConfig
	redis   *Redis
	app     *soakApp
	control string // the app's 503 burst file
	nodes   *soakNodes
	record  *soakRecord
	clients *soakClients
	began   time.Time
	faults  []soakFault

	progressed time.Duration // when waitUntil last said how the crowd is doing
}

// soakFault is one fault injected, for the report and to place what was
// lost in time.
type soakFault struct {
	at, until time.Duration // since the soak began
	what      string
}

func TestSoak(t *testing.T) {
	s := &soak{t: t, cfg: soakConfigFromEnv(t)}
	s.setUp()
	s.run()
	s.check()
}

func (s *soak) setUp() {
	t := s.t
	dir := t.TempDir()
	recordPath := filepath.Join(dir, "record.tsv")
	s.control = filepath.Join(dir, "fail-until")
	s.record = newSoakRecord(recordPath)
	s.redis = StartRedis(t)
	s.app = newSoakApp(t, recordPath, s.control)
	soakRedisPort, soakAppPort = portOf(s.redis.Addr), portOf(s.app.addr)
	// What a careful operator runs: Redis for broadcasts and lost-node
	// close events, a short lease so a lost node is reaped within seconds,
	// every other key (close_retry_for, shutdown_timeout, timeouts) at its
	// default.
	s.nodes = newSoakNodes(t, 2, CablecarOptions{
		Upstream: s.app.upstream,
		Config: map[string]any{
			"broker.url":             s.redis.URL,
			"broker.lease_ttl":       s.cfg.LeaseTTL.String(),
			"shutdown_timeout":       nil,
			"proxy.connect_timeout":  nil,
			"proxy.response_timeout": nil,
			// Debug lines for every connection would be kept in memory by
			// the harness; what went wrong is at warn.
			"log.level": "warn",
		},
	})
}

// run lets the clients loose and injects the faults on a schedule: each at
// its share of the duration, or as soon as the one before has finished.
func (s *soak) run() {
	t, cfg := s.t, s.cfg
	s.began = time.Now()
	s.clients = newSoakClients(cfg, s.nodes, s.began)
	t.Cleanup(func() { s.clients.leave(30 * time.Second) })
	ramp := min(15*time.Second, cfg.Duration/10)
	s.clients.start(ramp)
	s.logf("%d clients connecting over %v to %d nodes, %d rooms; faults begin at %v",
		cfg.Clients, ramp, 2, cfg.rooms(), s.share(0.12))

	// kill -9 of a node: its clients drop, the survivor posts their close
	// events (by: node_lost) once the lease lapses; then it comes back.
	s.waitUntil(s.share(0.12))
	survivor := s.nodes.survivors()[1]
	lostBefore := nodeMetric(survivor.c, "cablecar_node_lost_connections_total")
	at := s.now()
	victim := s.nodes.kill(0)
	WaitFor(t, 10*s.cfg.LeaseTTL+3*time.Minute, survivor.name+" to reap "+victim.name, func() bool {
		return nodeMetric(survivor.c, "cablecar_node_lost_total") >= 1
	})
	reaped := nodeMetric(survivor.c, "cablecar_node_lost_connections_total") - lostBefore
	back := s.nodes.start(0)
	s.fault(at, fmt.Sprintf("kill -9 %s; %s reaped %.0f of its connections (node_lost); %s started", victim.name, survivor.name, reaped, back.name))

	// Redis restarts empty: leases, records and subscriptions come back.
	s.waitUntil(s.share(0.22))
	at = s.now()
	s.redis.Restart()
	s.fault(at, "redis-server killed and restarted empty")

	// The app answers 503 to everything in three bursts.
	s.waitUntil(s.share(0.30))
	burst := min(3*time.Second, cfg.Duration/60)
	for i := range 3 {
		at = s.now()
		until := time.Now().Add(burst)
		if err := os.WriteFile(s.control, fmt.Appendf(nil, "%d.%09d", until.Unix(), until.Nanosecond()), 0o600); err != nil {
			t.Fatalf("asking the app for a 503 burst: %v", err)
		}
		s.waitUntil(at + burst + burst*4/3)
		s.fault(at, fmt.Sprintf("503 burst %d of 3, %v", i+1, burst))
	}

	// The app goes away altogether (killed), then comes back.
	s.waitUntil(s.share(0.40))
	at = s.now()
	s.app.kill()
	s.waitUntil(at + cfg.AppOutage)
	s.app.start()
	s.fault(at, fmt.Sprintf("app killed, away %v, restarted", (s.now()-at).Round(100*time.Millisecond)))

	// A rolling restart: SIGTERM to each node in turn, a new process in its
	// place before the next.
	s.waitUntil(s.now() + cfg.Duration/20)
	for i := range 2 {
		at = s.now()
		node, code, took, err := s.nodes.terminate(i, 40*time.Second)
		if err != nil || code != 0 {
			t.Errorf("SIGTERM %s: exit code %d after %v, %v", node.name, code, took.Round(time.Millisecond), err)
		}
		back := s.nodes.start(i)
		s.fault(at, fmt.Sprintf("SIGTERM %s (exit %d in %v); %s started", node.name, code, took.Round(100*time.Millisecond), back.name))
	}

	s.waitUntil(cfg.Duration)
	s.logf("chat over; every client leaves")
	if !s.clients.leave(30 * time.Second) {
		t.Errorf("clients still running 30s after being told to leave")
	}
}

// check waits for the last close events and the nodes to come back to
// rest, prints the figures, and fails on every broken invariant.
func (s *soak) check() {
	t := s.t
	opened := s.clients.ids()
	var must, lost []string
	settled := poll(s.cfg.Settle, func() bool {
		if err := s.record.update(); err != nil {
			t.Fatalf("reading the app's record: %v", err)
		}
		must = s.record.mustClose(opened)
		lost = s.record.lost(must)
		return len(lost) == 0
	})
	s.logf("close events settled: %v (%d of %d still without one)", settled, len(lost), len(must))

	// Near baseline (nearBaseline): goroutines and files within a few of a
	// fresh node's, resident memory within 64 MiB.
	type rest struct {
		node  *soakNode
		after procStats
		conns float64
		ok    bool
	}
	var rests []rest
	for _, node := range s.nodes.survivors() {
		r := rest{node: node}
		r.ok = poll(90*time.Second, func() bool {
			st, err := readProcStats(node.c)
			if err != nil {
				return false
			}
			r.after = st
			r.conns = nodeMetric(node.c, "cablecar_connections")
			return r.conns == 0 && nearBaseline(node.base, st)
		})
		rests = append(rests, r)
	}

	doubled := s.record.doubled()
	reordered := s.record.reordered()
	var neverOpened int
	seen := map[string]bool{}
	for _, id := range opened {
		seen[id] = true
	}
	for id := range s.record.accepted {
		if _, heard := s.record.conns[id]; !heard && !seen[id] {
			neverOpened++
		}
	}

	// The report.
	c := s.clients
	var b strings.Builder
	fmt.Fprintf(&b, "\n=== chaos soak: %v, %d clients, %d rooms, app outage %v, lease_ttl %v ===\n",
		s.cfg.Duration, s.cfg.Clients, s.cfg.rooms(), s.cfg.AppOutage, s.cfg.LeaseTTL)
	fmt.Fprintf(&b, "connections: %d dials, %d opened (client saw its id), %d refused or failed; %d accepted by the app (%d of them never opened at either end)\n",
		c.dials.Load(), c.opened.Load(), c.refused.Load(), len(s.record.accepted), neverOpened)
	fmt.Fprintf(&b, "messages: %d sent by clients, %d broadcasts received by clients\n", c.sent.Load(), c.received.Load())
	fmt.Fprintf(&b, "events at the app: %d distinct, %d arrivals (%d duplicates from retries), over %d connections\n",
		s.record.events(), s.record.lines-len(s.record.accepted), s.record.lines-len(s.record.accepted)-s.record.events(), len(s.record.conns))
	fmt.Fprintf(&b, "faults injected: %d\n", len(s.faults))
	for _, f := range s.faults {
		fmt.Fprintf(&b, "  %7s – %-7s %s\n", f.at.Round(time.Second), f.until.Round(time.Second), f.what)
	}
	fmt.Fprintf(&b, "how client sessions ended: %s\n", counts(c.tally()))
	fmt.Fprintf(&b, "close events by code/by: %s\n", counts(s.record.closeKinds()))
	fmt.Fprintf(&b, "close events: %d connections must have one; lost = %d, doubled = %d, reordered = %d\n",
		len(must), len(lost), len(doubled), len(reordered))
	if len(lost) > 0 {
		fmt.Fprintf(&b, "lost close events by node, last fault before the connection ended, and how it ended: %s\n", counts(s.lostCauses(lost)))
		for _, id := range lost[:min(5, len(lost))] {
			fmt.Fprintf(&b, "  lost %s\n", s.describe(id))
		}
	}
	for _, id := range doubled[:min(5, len(doubled))] {
		fmt.Fprintf(&b, "  doubled %s\n", s.describe(id))
	}
	for _, id := range slices.Sorted(maps.Keys(reordered))[:min(5, len(reordered))] {
		fmt.Fprintf(&b, "  reordered %s: %s\n", id, reordered[id])
	}
	if len(s.record.bad) > 0 {
		fmt.Fprintf(&b, "unreadable record lines: %d, first %q\n", len(s.record.bad), s.record.bad[0])
	}
	for _, r := range rests {
		fmt.Fprintf(&b, "%s (pid %d): before %s; after %s; %v connections open; close events dropped %v; near baseline: %v\n",
			r.node.name, r.node.c.PID(), r.node.base, r.after, r.conns,
			nodeMetric(r.node.c, "cablecar_close_events_dropped_total"), r.ok)
	}
	for _, node := range s.nodes.every() {
		if w := node.warnings(); len(w) > 0 {
			fmt.Fprintf(&b, "%s warned: %s\n", node.name, counts(w))
		}
	}
	fmt.Print(b.String())

	// The invariants.
	if c.opened.Load() < int64(s.cfg.Clients) {
		t.Errorf("only %d connections opened for %d clients: the soak did not soak", c.opened.Load(), s.cfg.Clients)
	}
	if len(lost) > 0 {
		t.Errorf("lost = %d: connections without a close event at the app (see above)", len(lost))
	}
	if len(doubled) > 0 {
		t.Errorf("doubled = %d: connections with more than one distinct close event", len(doubled))
	}
	if len(reordered) > 0 {
		t.Errorf("reordered = %d: connections whose events arrived out of order", len(reordered))
	}
	if len(s.record.bad) > 0 {
		t.Errorf("%d record lines the soak cannot read", len(s.record.bad))
	}
	for _, r := range rests {
		if !r.ok {
			t.Errorf("%s did not come back near its baseline within 90s: before %s, after %s, %v connections open",
				r.node.name, r.node.base, r.after, r.conns)
		}
	}
}

// nearBaseline: a few goroutines more than at rest; a few open files more,
// besides connections to Redis, which go-redis keeps idle (for up to 30
// minutes) in pools of a fixed size whatever the number of WebSockets
// served — 10 per CPU for commands, 10 for pipelines, and the pub/sub
// connections; and at most 64 MiB more resident memory (Go hands freed
// memory back to the kernel gradually, so RSS never comes all the way
// down).
func nearBaseline(base, now procStats) bool {
	redisPool := 10*runtime.NumCPU() + 10 + 4
	others := func(s procStats) int { return s.FDs - s.FDKinds["redis"] }
	return now.Goroutines <= base.Goroutines+10 &&
		others(now) <= others(base)+10 &&
		now.FDKinds["redis"] <= base.FDKinds["redis"]+redisPool &&
		now.RSS <= base.RSS+64<<20
}

// lostCauses groups lost connections by the node they were on, the last
// fault that began before their client saw them end, and how it ended.
func (s *soak) lostCauses(lost []string) map[string]int {
	out := map[string]int{}
	for _, id := range lost {
		sess, ok := s.clients.sessionOf(id)
		if !ok {
			out["(no client saw it open)"]++
			continue
		}
		last := "before any fault"
		for _, f := range s.faults {
			if f.at <= sess.ended {
				last = f.what
			}
		}
		out[fmt.Sprintf("%s, after %q, %s", sess.node, truncate(last, 40), sess.how)]++
	}
	return out
}

// describe is what the client and the app saw of one connection.
func (s *soak) describe(id string) string {
	var b strings.Builder
	b.WriteString(id)
	if sess, ok := s.clients.sessionOf(id); ok {
		fmt.Fprintf(&b, ": on %s, opened at %v, ended at %v (%s)", sess.node,
			sess.opened.Round(100*time.Millisecond), sess.ended.Round(100*time.Millisecond), sess.how)
	}
	if l := s.record.conns[id]; l != nil {
		var evs []string
		for _, ev := range l.events[max(0, len(l.events)-4):] {
			evs = append(evs, strings.TrimSpace(ev.typ+" "+ev.detail))
		}
		fmt.Fprintf(&b, "; the app had %d events, last: %s", len(l.events), strings.Join(evs, ", "))
	} else {
		b.WriteString("; the app had no event")
	}
	return b.String()
}

func (s *soak) now() time.Duration { return time.Since(s.began) }

// share is a fraction of the duration, as an offset from the beginning.
func (s *soak) share(f float64) time.Duration { return time.Duration(f * float64(s.cfg.Duration)) }

// waitUntil waits for a point of the schedule: the faults come at times,
// not on conditions. Every 30 s of waiting it says how the crowd is doing.
func (s *soak) waitUntil(at time.Duration) {
	for range 10_000 {
		d := at - s.now()
		if d <= 0 {
			return
		}
		if s.now()-s.progressed >= 30*time.Second {
			s.progressed = s.now()
			c := s.clients
			s.logf("%d connections open, %d opened so far, %d refused, %d messages sent, %d broadcasts received",
				c.live.Load(), c.opened.Load(), c.refused.Load(), c.sent.Load(), c.received.Load())
		}
		time.Sleep(min(d, 30*time.Second-(s.now()-s.progressed)))
	}
}

func (s *soak) fault(at time.Duration, what string) {
	s.faults = append(s.faults, soakFault{at: at, until: s.now(), what: what})
	s.logf("fault: %s", what)
}

func (s *soak) logf(format string, args ...any) {
	fmt.Printf("soak %7s  %s\n", s.now().Round(100*time.Millisecond), fmt.Sprintf(format, args...))
}

// counts writes a tally, largest first.
func counts(m map[string]int) string {
	keys := slices.SortedFunc(maps.Keys(m), func(a, b string) int {
		if m[a] != m[b] {
			return m[b] - m[a]
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return strings.Join(parts, "; ")
}
