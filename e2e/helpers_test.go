package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// newClient is an HTTP client with its own connection pool, so one test's
// keep-alive connections never carry another's requests.
func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: 10 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// do sends req and returns the response with its whole body read.
func do(t *testing.T, client *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp, body
}

func newRequest(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	return req
}

// echoReply is what the app's /echo and /upload answer.
type echoReply struct {
	Method      string            `json:"method"`
	Path        string            `json:"path"`
	QueryString string            `json:"query_string"`
	Headers     map[string]string `json:"headers"`
	RemoteAddr  string            `json:"remote_addr"`
	Peer        string            `json:"peer"`
	BodySize    int64             `json:"body_size"`
	BodySHA256  string            `json:"body_sha256"`
}

// Header is the value the app saw for name, and whether it saw one.
func (e echoReply) Header(name string) (string, bool) {
	v, ok := e.Headers[textproto.CanonicalMIMEHeaderKey(name)]
	return v, ok
}

func decodeEcho(t *testing.T, body []byte) echoReply {
	t.Helper()
	var e echoReply
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("app reply is not echo JSON: %v: %.300q", err, body)
	}
	return e
}

// echo sends req (to some /echo) and decodes what the app saw.
func echo(t *testing.T, client *http.Client, req *http.Request) echoReply {
	t.Helper()
	resp, body := do(t, client, req)
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: status %d: %.300q", req.Method, req.URL, resp.StatusCode, body)
	}
	return decodeEcho(t, body)
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// prngBody streams size bytes from a seeded PRNG through a pipe, never
// holding more than one 64 KiB block, and returns the reader and a function
// giving the SHA-256 of what was written (valid once the reader hit EOF).
func prngBody(size int64, seed uint64) (io.ReadCloser, func() string) {
	pr, pw := io.Pipe()
	sum := make(chan string, 1)
	go func() {
		var key [32]byte
		for i := range 8 {
			key[i] = byte(seed >> (8 * i))
		}
		rng := rand.NewChaCha8(key)
		h := sha256.New()
		w := io.MultiWriter(pw, h)
		buf := make([]byte, 64*1024)
		for left := size; left > 0; {
			n := int64(len(buf))
			if left < n {
				n = left
			}
			_, _ = rng.Read(buf[:n])
			if _, err := w.Write(buf[:n]); err != nil {
				sum <- "write failed: " + err.Error()
				return
			}
			left -= n
		}
		sum <- hex.EncodeToString(h.Sum(nil))
		pw.Close()
	}()
	return pr, func() string {
		select {
		case s := <-sum:
			return s
		case <-time.After(10 * time.Second):
			return "the body generator did not finish"
		}
	}
}

// lineStream reads a streamed response line by line in the background so a
// test can wait for each line with a deadline.
type lineStream struct {
	resp  *http.Response
	items chan lineItem
}

type lineItem struct {
	line string
	err  error
}

// openStream GETs url and starts reading the body by lines. The request is
// canceled when the test ends.
func openStream(t *testing.T, client *http.Client, url string) *lineStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	s := &lineStream{resp: resp, items: make(chan lineItem, 64)}
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-done
	})
	go func() {
		defer close(done)
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				select {
				case s.items <- lineItem{line: line}:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				select {
				case s.items <- lineItem{err: err}:
				case <-ctx.Done():
				}
				return
			}
		}
	}()
	return s
}

// next is the next line, or the error that ended the body; errTimeout if
// nothing came within timeout.
func (s *lineStream) next(timeout time.Duration) (string, error) {
	select {
	case it := <-s.items:
		return it.line, it.err
	case <-time.After(timeout):
		return "", errTimeout
	}
}

var errTimeout = errors.New("nothing arrived in time")

// expect fails unless the next line is want (without its newline).
func (s *lineStream) expect(t *testing.T, want string, timeout time.Duration, why string) {
	t.Helper()
	line, err := s.next(timeout)
	if err != nil {
		t.Fatalf("waiting for %q (%s): %v", want, why, err)
	}
	if got := strings.TrimSuffix(line, "\n"); got != want {
		t.Fatalf("got line %q, want %q (%s)", got, want, why)
	}
}

// expectEnd fails unless the body ends cleanly within timeout.
func (s *lineStream) expectEnd(t *testing.T, timeout time.Duration) {
	t.Helper()
	line, err := s.next(timeout)
	if err != io.EOF {
		t.Fatalf("want the stream to end, got %q, %v", line, err)
	}
}

// rawExchange writes request text on a new TCP connection to addr and
// returns the parsed response with its body read; for requests the Go
// client would not send as written (hop-by-hop headers, Upgrade…).
func rawExchange(t *testing.T, addr, request, method string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatalf("write request: %v", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read response body: %v", err)
	}
	return resp, body
}

// uniqueID is a short id for release gates and request ids, unique within
// the run.
func uniqueID(t *testing.T) string {
	return fmt.Sprintf("%s-%d", strings.NewReplacer("/", "-", " ", "-").Replace(t.Name()), time.Now().UnixNano())
}
