package leakcheck

import (
	"os"
	"slices"
	"strings"
	"testing"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// What runtime.Stack(buf, true) writes, with a method, a closure, a generic
// function and a "created by" frame.
const sample = `goroutine 1 [running]:
main.main()
	/tmp/st.go:21 +0x112

goroutine 19 [chan receive]:
main.(*T).block(...)
	/tmp/st.go:11
main.main.func1()
	/tmp/st.go:17 +0x49
created by main.main in goroutine 1
	/tmp/st.go:17 +0x93

goroutine 20 [chan receive, 2 minutes]:
main.Gen[...](0xc000010000, {0x1, 0x2})
	/tmp/st.go:24
created by main.main in goroutine 1
	/tmp/st.go:18 +0xda
`

func TestParse(t *testing.T) {
	gs := parse([]byte(sample))
	want := []struct {
		id    string
		funcs []string
	}{
		{"1", []string{"main.main"}},
		{"19", []string{"main.(*T).block", "main.main.func1", "main.main"}},
		{"20", []string{"main.Gen[...]", "main.main"}},
	}
	if len(gs) != len(want) {
		t.Fatalf("parsed %d goroutines, want %d", len(gs), len(want))
	}
	for i, w := range want {
		if gs[i].id != w.id || !slices.Equal(gs[i].funcs, w.funcs) {
			t.Errorf("goroutine %d: id %s funcs %q, want %s %q", i, gs[i].id, gs[i].funcs, w.id, w.funcs)
		}
		if !strings.HasPrefix(gs[i].stack, "goroutine "+w.id+" [") {
			t.Errorf("goroutine %d: stack %q", i, gs[i].stack)
		}
	}
	if !gs[1].calls([]string{"main.main.func1"}) || gs[2].calls([]string{"main.main.func1"}) {
		t.Error("calls does not match the functions in the stack")
	}
}

// blockedHere is the function a leaked goroutine is found in. It is
// started by goBlocked, which returns once the goroutine is inside it: a
// goroutine just created may not have entered its function yet, and its
// stack then shows only the go statement's wrapper.
func blockedHere(started, stop, done chan struct{}) {
	close(started)
	<-stop
	close(done)
}

func goBlocked(stop, done chan struct{}) {
	started := make(chan struct{})
	go blockedHere(started, stop, done)
	<-started
}

func TestFindsTheLeakUntilItEnds(t *testing.T) {
	c := Start()
	stop, done := make(chan struct{}), make(chan struct{})
	goBlocked(stop, done)
	t.Cleanup(func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	})

	// The goroutine waits on stop, which only this test closes: it is
	// there however long the check waits.
	leaked := c.wait(0)
	if len(leaked) != 1 || !leaked[0].calls([]string{"github.com/cablecar/cablecar/internal/leakcheck.blockedHere"}) {
		t.Fatalf("leaked %d goroutines, want the one in blockedHere: %+v", len(leaked), leaked)
	}
	if code := c.Check(3); code != 3 {
		t.Errorf("Check after failed tests returned %d, want their code 3", code)
	}

	close(stop)
	if leaked := c.wait(Wait); len(leaked) != 0 {
		t.Fatalf("still leaked after the goroutine was told to end: %+v", leaked)
	}
	if code := c.Check(0); code != 0 {
		t.Errorf("Check with nothing leaked returned %d", code)
	}
}

func TestGoroutinesFromBeforeStartAreNotLeaks(t *testing.T) {
	stop, done := make(chan struct{}), make(chan struct{})
	goBlocked(stop, done)
	defer func() { close(stop); <-done }()
	c := Start()
	if leaked := c.wait(0); len(leaked) != 0 {
		t.Fatalf("a goroutine from before Start counted as leaked: %+v", leaked)
	}
}

func TestAllowedAreNotLeaks(t *testing.T) {
	g := parse([]byte("goroutine 7 [sleep]:\ntime.Sleep(0x3b9aca00)\n\t/go/src/runtime/time.go:300 +0xf2\n" +
		"github.com/valyala/fasthttp.updateServerDate.func1()\n\t/mod/fasthttp/header.go:2407 +0x1d\n" +
		"created by github.com/valyala/fasthttp.updateServerDate in goroutine 6\n\t/mod/fasthttp/header.go:2405 +0x25"))
	if len(g) != 1 || !g[0].calls(allowed) {
		t.Fatalf("fasthttp's date updater is not allowed: %+v", g)
	}
}
