package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// A real browser for the tests of pages: Debian's chromium, headless,
// driven over the DevTools protocol with chromedp, so no Node is needed.
// Every wait has a deadline; a missing chromium fails the test with the
// command that installs it.

// pageWait bounds one step on a page: a navigation, a click, a condition
// coming true.
const pageWait = 10 * time.Second

// chromiumPath is Debian's chromium, or whatever chromium is on PATH.
func chromiumPath(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	t.Fatal("e2e: chromium not installed: run `make deps` (it installs Debian's chromium; CI does so too)")
	return ""
}

// Browser is one headless chromium process for the test, stopped when the
// test ends.
type Browser struct {
	t   testing.TB
	ctx context.Context // the browser's first tab; pages are made from it
	out *Output
}

// StartBrowser starts chromium with a fresh profile and waits until it
// answers.
func StartBrowser(t testing.TB) *Browser {
	t.Helper()
	exe := chromiumPath(t)
	b := &Browser{t: t, out: &Output{}}
	dumpOnFailure(t, "chromium", b.out)
	profile := t.TempDir() // removed after the browser has stopped (cleanups run last-in first-out)

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(profile),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		// Timers of pages in the background run at full speed: two pages
		// of one test are both "in front".
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.WindowSize(900, 700),
		chromedp.CombinedOutput(b.out),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithLogf(b.logf), chromedp.WithErrorf(b.logf))
	t.Cleanup(func() {
		cancel() // closes the browser and waits for it
		cancelAlloc()
	})
	// The first run starts the browser, which then lives as long as the
	// context of that run: that context takes no deadline, the wait does.
	if err := within(pageWait+10*time.Second, cancel, func() error { return chromedp.Do(ctx) }); err != nil {
		t.Fatalf("starting chromium (%s): %v", exe, err)
	}
	b.ctx = ctx
	return b
}

func (b *Browser) logf(format string, args ...any) {
	fmt.Fprintf(b.out, "chromedp: "+format+"\n", args...)
}

// within runs f and waits for it at most d; past that it calls stop, which
// must make f return, and reports the timeout.
func within(d time.Duration, stop func(), f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		stop()
		<-done
		return fmt.Errorf("no answer within %s", d)
	}
}

// Page is one tab in a browser context of its own: its cookies and storage
// are its own, as another person's browser would have them.
type Page struct {
	Name string

	t      testing.TB
	ctx    context.Context
	cancel context.CancelFunc
	log    *Output // the page's console and uncaught exceptions
}

// NewPage opens a tab in a fresh browser context. It is closed when the
// test ends, or earlier with Close.
func (b *Browser) NewPage(name string) *Page {
	b.t.Helper()
	p := &Page{Name: name, t: b.t, log: &Output{}}
	dumpOnFailure(b.t, "the console of page "+name, p.log)
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext(), chromedp.WithListener(p.listen))
	p.ctx, p.cancel = ctx, cancel
	b.t.Cleanup(cancel)
	// As for the browser, the tab lives as long as the context of its
	// first run.
	if err := within(pageWait, cancel, func() error { return chromedp.Do(ctx) }); err != nil {
		b.t.Fatalf("opening page %s: %v", name, err)
	}
	return p
}

func (p *Page) listen(ev any) {
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		var parts []string
		for _, a := range ev.Args {
			if a.Value != nil {
				parts = append(parts, string(a.Value))
			} else {
				parts = append(parts, a.Description)
			}
		}
		fmt.Fprintf(p.log, "console.%s: %s\n", ev.Type, strings.Join(parts, " "))
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		text := d.Text
		if d.Exception != nil && d.Exception.Description != "" {
			text += " " + d.Exception.Description
		}
		fmt.Fprintf(p.log, "uncaught exception at %s:%d: %s\n", d.URL, d.LineNumber+1, text)
	}
}

// Do runs the steps with a deadline, failing the test with what the page
// was doing.
func (p *Page) Do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, pageWait)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("page %s: %s: %v", p.Name, what, deadlineSaid(err))
	}
}

// WaitJS waits until the JavaScript expression is truthy on the page, for
// at most pageWait.
func (p *Page) WaitJS(what, expr string) {
	p.t.Helper()
	p.WaitJSWithin(pageWait, what, expr)
}

// WaitJSWithin is WaitJS with a deadline of its own.
func (p *Page) WaitJSWithin(d time.Duration, what, expr string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, d+time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingTimeout(d),
		chromedp.WithPollingInterval(20*time.Millisecond)))
	if err != nil {
		p.t.Fatalf("page %s: waiting for %s: %v (state %q)", p.Name, what, err, p.state())
	}
}

// state is the page's text of #state if it has one, for failure messages.
func (p *Page) state() string {
	ctx, cancel := context.WithTimeout(p.ctx, time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.getElementById("state") || {}).textContent || ""`))
	return s
}

// EvalJS evaluates a JavaScript expression on the page and decodes its
// value into T.
func EvalJS[T any](p *Page, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, pageWait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("page %s: evaluating %.100q: %v", p.Name, expr, deadlineSaid(err))
	}
	return v
}

// Screenshot saves a PNG of the page as an artifact of the run and returns
// its path.
func (p *Page) Screenshot(name string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, pageWait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Fatalf("page %s: screenshot: %v", p.Name, deadlineSaid(err))
	}
	path := filepath.Join(ArtifactsDir(p.t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatalf("writing the screenshot: %v", err)
	}
	p.t.Logf("screenshot of page %s: %s", p.Name, path)
	return path
}

// Close closes the tab, as a person closing it would.
func (p *Page) Close() {
	p.cancel()
}

// ArtifactsDir is where a run keeps what a person may want to look at
// afterwards (screenshots): $CABLECAR_ARTIFACTS, else artifacts/ at the
// repository's root. It is created if need be.
func ArtifactsDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("CABLECAR_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(RepoRoot(t), "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artifacts directory: %v", err)
	}
	return dir
}

func deadlineSaid(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("not within %s (%w)", pageWait, err)
	}
	return err
}
