package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// PumaOptions says how to run the test app.
type PumaOptions struct {
	Unix    bool              // listen on a Unix socket in a temp dir instead of TCP
	Port    int               // TCP port; 0 picks a free one (ignored with Unix)
	Threads string            // Puma's -t, "min:max"; "" is 8:32, enough that held streams starve nothing
	Env     map[string]string // extra environment for the app
	// Rackup, when set, runs this config.ru instead of the test app; Puma
	// is then ready when it answers anything at all on /.
	Rackup string
}

// Puma is testdata/app/config.ru running under the real puma binary.
type Puma struct {
	// Upstream is the value for Cablecar's upstream key:
	// http://127.0.0.1:port or unix:/path/puma.sock.
	Upstream string
	// URL is the base URL for requests straight to the app through
	// Client(); for a Unix socket its host is a placeholder.
	URL string
	// Addr is 127.0.0.1:port, or the socket path.
	Addr string

	t      testing.TB
	out    *Output
	proc   *process
	client *http.Client
}

// StartPuma starts the test app and waits until GET /health answers. It is
// killed when the test ends.
func StartPuma(t testing.TB, opts PumaOptions) *Puma {
	t.Helper()
	requireTool(t, "ruby")
	puma := requireTool(t, "puma")
	app := filepath.Join(RepoRoot(t), "testdata", "app")

	p := &Puma{t: t, out: &Output{}}
	transport := &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 5 * time.Second}
	var bind string
	if opts.Unix {
		sock := filepath.Join(ShortTempDir(t), "puma.sock")
		bind = "unix://" + sock
		p.Upstream = "unix:" + sock
		p.URL = "http://puma.sock"
		p.Addr = sock
		transport.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
	} else {
		port := opts.Port
		if port == 0 {
			port = FreePort(t)
		}
		p.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		bind = "tcp://" + p.Addr
		p.Upstream = "http://" + p.Addr
		p.URL = p.Upstream
	}
	p.client = &http.Client{Transport: transport, Timeout: 30 * time.Second}
	t.Cleanup(transport.CloseIdleConnections)

	threads := opts.Threads
	if threads == "" {
		threads = "8:32"
	}
	// --no-config: no config/puma.rb found by accident changes the run.
	rackup := filepath.Join(app, "config.ru")
	if opts.Rackup != "" {
		rackup = opts.Rackup
	}
	cmd := exec.Command(puma, "--no-config", "-b", bind, "-t", threads, "-e", "production", rackup)
	cmd.Dir = filepath.Dir(rackup)
	cmd.Env = append(os.Environ(), "RACK_ENV=production")
	for _, k := range slices.Sorted(maps.Keys(opts.Env)) {
		cmd.Env = append(cmd.Env, k+"="+opts.Env[k])
	}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	dumpOnFailure(t, "puma "+p.Addr, p.out)
	p.proc = startProcess(t, "puma", cmd)
	proc := p.proc
	t.Cleanup(func() { proc.stop(syscall.SIGKILL, 0) })

	var exited bool
	WaitFor(t, 20*time.Second, "puma to answer /health on "+p.Addr, func() bool {
		if proc.exited() {
			exited = true
			return true
		}
		if opts.Rackup != "" {
			code, _, err := get(p.client, p.URL+"/", time.Second)
			return err == nil && code > 0
		}
		code, body, err := get(p.client, p.URL+"/health", time.Second)
		return err == nil && code == 200 && body == "ok"
	})
	if exited {
		t.Fatalf("puma exited before answering /health: %v", proc.err)
	}
	return p
}

// Client talks to the app directly, not through Cablecar: over TCP or the
// Unix socket, whichever it listens on.
func (p *Puma) Client() *http.Client { return p.client }

// PID is the Puma process id.
func (p *Puma) PID() int { return p.proc.pid() }

// Output is everything Puma has written so far.
func (p *Puma) Output() string { return p.out.String() }

// Hits asks the app how many requests it has seen for path (the path only,
// no query). Tests use it to prove a request never reached the app.
func (p *Puma) Hits(path string) int {
	p.t.Helper()
	code, body, err := get(p.client, p.URL+"/hits?path="+url.QueryEscape(path), 5*time.Second)
	if err != nil || code != 200 {
		p.t.Fatalf("GET /hits from puma: status %d, %v", code, err)
	}
	var reply struct {
		Hits int `json:"hits"`
	}
	if err := json.Unmarshal([]byte(body), &reply); err != nil {
		p.t.Fatalf("GET /hits from puma: %v in %q", err, body)
	}
	return reply.Hits
}

// Release lets a held /sse or /chunked stream with this id send its next
// event. It goes straight to the app, so it works whatever Cablecar does.
func (p *Puma) Release(id string) {
	p.t.Helper()
	code, body, err := get(p.client, p.URL+"/release?id="+url.QueryEscape(id), 5*time.Second)
	if err != nil || code != 200 {
		p.t.Fatalf("GET /release?id=%s from puma: status %d %q, %v", id, code, body, err)
	}
}

// Stop asks Puma to stop (SIGTERM), which it does once its requests finish,
// and kills it if that takes more than five seconds. It waits until Puma is
// gone.
func (p *Puma) Stop() {
	p.t.Helper()
	p.halt(syscall.SIGTERM, 5*time.Second)
}

// Kill stops Puma at once, as a crash would, with requests still open.
func (p *Puma) Kill() {
	p.t.Helper()
	p.halt(syscall.SIGKILL, 0)
}

func (p *Puma) halt(sig syscall.Signal, grace time.Duration) {
	p.t.Helper()
	if !p.proc.stop(sig, grace) {
		p.t.Fatalf("puma on %s did not exit", p.Addr)
	}
	p.client.Transport.(*http.Transport).CloseIdleConnections()
}

// String names the instance in messages.
func (p *Puma) String() string { return fmt.Sprintf("puma(%s)", p.Addr) }
