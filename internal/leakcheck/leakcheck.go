// Package leakcheck fails a test binary when goroutines outlive its tests.
// Every package's TestMain calls it:
//
//	func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }
//
// A goroutine left behind is a test that did not clean up, or code that
// cannot be stopped; either way the next test inherits it, and a server
// that starts and stops a part a thousand times will hold a thousand of
// them. After the tests pass, the check waits a few seconds for the
// goroutines the tests started to end, and otherwise prints their stacks
// and makes the run fail. It is for tests only: it reads every goroutine's
// stack, which stops the world.
package leakcheck

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// Wait is how long the check gives goroutines to end once the tests have
// passed: a Close that returns before its goroutines have (a connection's
// reader noticing its socket closed) is not a leak, and under -race on a
// busy machine that can take a while.
const Wait = 5 * time.Second

// allowed are library goroutines that no test can end in time, named by a
// function in their stack: they live as long as the process by design, or
// they end on their own but only after a sleep longer than Wait. Each entry
// says who starts it and why it is no leak; keep the list short, and never
// add a goroutine of ours: ours must end.
var allowed = []string{
	// fasthttp refreshes the Date header it serves once a second, from
	// one goroutine started by the first server to run and never stopped.
	"github.com/valyala/fasthttp.updateServerDate.func1",
	// A fasthttp server's worker-pool cleaner: Shutdown tells it to stop,
	// but it looks only between sleeps of MaxIdleWorkerDuration (10s by
	// default). A server never shut down leaves its Serve goroutine too,
	// which is not allowed.
	"github.com/valyala/fasthttp.(*workerPool).Start.func2",
	// A fasthttp HostClient's idle-connection cleaner (the callback and
	// upstream clients): it ends once the client has no connection, which
	// Close gives at once, but it looks only between sleeps of
	// MaxIdleConnDuration. Idle client connections hold no goroutine, so
	// this one is all there is to see, and it ends by itself.
	"github.com/valyala/fasthttp.(*HostClient).connsCleaner",
	// signal.Notify starts the goroutine that receives signals for the
	// whole process (a test of graceful shutdown calls it).
	"os/signal.signal_recv",
	"os/signal.loop",
	"runtime.ensureSigM",
}

// Checker remembers the goroutines that existed before the tests ran: they
// belong to the process (package init, the testing framework), not to a
// test.
type Checker struct {
	before map[string]bool
}

// Start takes the snapshot; call it before the tests run.
func Start() *Checker {
	c := &Checker{before: map[string]bool{}}
	for _, g := range goroutines() {
		c.before[g.id] = true
	}
	return c
}

// Main runs the tests and checks for leaks; its result is the exit code.
func Main(m *testing.M) int {
	return Start().Check(m.Run())
}

// Check is for a TestMain that runs the tests itself: code is what the
// tests returned, and Check returns the exit code. When the tests failed it
// returns code at once, without looking: goroutines left by a failed test
// are most often the failure's consequence, and the failure is the news.
func (c *Checker) Check(code int) int {
	if code != 0 {
		return code
	}
	leaked := c.wait(Wait)
	if len(leaked) == 0 {
		return 0
	}
	fmt.Fprintf(os.Stderr, "leakcheck: %d goroutine(s) still running %s after the tests passed:\n\n", len(leaked), Wait)
	for _, g := range leaked {
		fmt.Fprintf(os.Stderr, "%s\n\n", g.stack)
	}
	return 1
}

// wait polls, with a growing pause, until no goroutine is leaked or the
// time is up, and returns what is still leaked then.
func (c *Checker) wait(within time.Duration) []goroutine {
	deadline := time.Now().Add(within)
	pause := time.Millisecond
	for {
		leaked := c.leaked()
		if len(leaked) == 0 || time.Now().After(deadline) {
			return leaked
		}
		time.Sleep(pause)
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// leaked lists the goroutines that are neither the caller, nor from before
// Start, nor allowed.
func (c *Checker) leaked() []goroutine {
	all := goroutines()
	var leaked []goroutine
	for _, g := range all[1:] { // all[0] is the caller
		if !c.before[g.id] && !g.calls(allowed) {
			leaked = append(leaked, g)
		}
	}
	return leaked
}

type goroutine struct {
	id    string
	funcs []string // the functions in its stack, innermost first
	stack string   // as runtime.Stack wrote it
}

// calls reports whether one of funcs is in g's stack.
func (g goroutine) calls(funcs []string) bool {
	for _, f := range g.funcs {
		if slices.Contains(funcs, f) {
			return true
		}
	}
	return false
}

// goroutines returns every goroutine's stack, the caller's first.
func goroutines() []goroutine {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return parse(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

// parse reads the text of runtime.Stack(buf, true): one block per
// goroutine, separated by a blank line; a header "goroutine N [state]:",
// then for each frame a line with the function and its arguments and a
// tab-indented line with the file, and last the "created by" frame.
func parse(text []byte) []goroutine {
	var gs []goroutine
	for block := range bytes.SplitSeq(bytes.TrimSpace(text), []byte("\n\n")) {
		lines := strings.Split(string(block), "\n")
		header := strings.Fields(lines[0])
		if len(header) < 2 || header[0] != "goroutine" {
			continue
		}
		g := goroutine{id: header[1], stack: string(block)}
		for _, line := range lines[1:] {
			if line == "" || line[0] == '\t' {
				continue // a file:line
			}
			if rest, ok := strings.CutPrefix(line, "created by "); ok {
				g.funcs = append(g.funcs, strings.Fields(rest)[0])
				continue
			}
			g.funcs = append(g.funcs, funcName(line))
		}
		gs = append(gs, g)
	}
	return gs
}

// funcName is the function of a frame line, without its arguments:
// "pkg.(*T).m(0xc000010000, ...)" is "pkg.(*T).m". The arguments are the
// last parenthesised part; a method's receiver type is the first.
func funcName(line string) string {
	if !strings.HasSuffix(line, ")") {
		return line
	}
	if i := strings.LastIndex(line, "("); i > 0 {
		return line[:i]
	}
	return line
}
