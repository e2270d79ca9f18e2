package e2e

import (
	"encoding/json"
	"fmt"
	"net/textproto"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// What the test app (testdata/app/ws.rb) recorded of each connection:
// its accept requests and event batches, read back over /ws/_log.

// WSAppLog is what the test app recorded for one connection id.
type WSAppLog struct {
	ID       string         `json:"id"`
	Known    bool           `json:"known"` // the app has seen this id at all
	Accepts  []WSAppRequest `json:"accepts"`
	Batches  []WSAppRequest `json:"batches"`  // every event POST, retries included, in arrival order
	Attempts map[string]int `json:"attempts"` // event id → POSTs that carried it
}

// WSAppRequest is one request the app received: an accept GET or an event
// POST.
type WSAppRequest struct {
	Method      string            `json:"method"`
	Path        string            `json:"path"`
	QueryString string            `json:"query_string"`
	Headers     map[string]string `json:"headers"`
	Raw         string            `json:"raw"`    // the body as received (POST)
	Status      int               `json:"status"` // what the app answered; 0 while it works on it
	Body        *WSEventBatch     `json:"body"`   // the parsed body (POST), nil if not JSON
	Error       string            `json:"error"`
	// ReceivedAt and AnsweredAt are the app's monotonic clock, in seconds,
	// when the POST arrived and when its answer was ready (0 until then).
	ReceivedAt float64 `json:"received_at"`
	AnsweredAt float64 `json:"answered_at"`
}

// Header is the value the app saw for name, and whether it saw one.
func (r WSAppRequest) Header(name string) (string, bool) {
	key := textproto.CanonicalMIMEHeaderKey(name)
	for k, v := range r.Headers {
		if textproto.CanonicalMIMEHeaderKey(k) == key {
			return v, true
		}
	}
	return "", false
}

// PathAndQuery is the request target as the app saw it.
func (r WSAppRequest) PathAndQuery() string {
	if r.QueryString == "" {
		return r.Path
	}
	return r.Path + "?" + r.QueryString
}

// WSEventBatch is the JSON body of one event webhook (SPEC §3).
type WSEventBatch struct {
	Connection WSConnection `json:"connection"`
	Events     []WSEvent    `json:"events"`
}

// WSConnection is the "connection" object of an event webhook.
type WSConnection struct {
	ID       string          `json:"id"`
	State    *string         `json:"state"`
	Channels []string        `json:"channels"`
	Claims   json.RawMessage `json:"claims"`
}

// WSEvent is one event of a webhook.
type WSEvent struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	Data   string `json:"data"`
	Binary bool   `json:"binary"`
	Code   int    `json:"code"`
	Reason string `json:"reason"`
	By     string `json:"by"`
}

func (e WSEvent) String() string {
	switch e.Type {
	case "message":
		return fmt.Sprintf("%s message %.60q binary=%v", e.ID, e.Data, e.Binary)
	case "close":
		return fmt.Sprintf("%s close %d %q by %s", e.ID, e.Code, e.Reason, e.By)
	}
	return e.ID + " " + e.Type
}

// Events is every event the app received, each once (the first arrival of
// its id), in arrival order.
func (l WSAppLog) Events() []WSEvent {
	seen := map[string]bool{}
	var out []WSEvent
	for _, b := range l.Batches {
		if b.Body == nil {
			continue
		}
		for _, e := range b.Body.Events {
			if !seen[e.ID] {
				seen[e.ID] = true
				out = append(out, e)
			}
		}
	}
	return out
}

// Close is the connection's close event, if the app has received one.
func (l WSAppLog) Close() (WSEvent, bool) {
	for _, e := range l.Events() {
		if e.Type == "close" {
			return e, true
		}
	}
	return WSEvent{}, false
}

// Messages are the data of the message events so far, in order.
func (l WSAppLog) Messages() []string {
	var out []string
	for _, e := range l.Events() {
		if e.Type == "message" {
			out = append(out, e.Data)
		}
	}
	return out
}

// BatchesWith are the POSTs that carried the event with id, retries
// included.
func (l WSAppLog) BatchesWith(id string) []WSAppRequest {
	var out []WSAppRequest
	for _, b := range l.Batches {
		if b.Body == nil {
			continue
		}
		for _, e := range b.Body.Events {
			if e.ID == id {
				out = append(out, b)
				break
			}
		}
	}
	return out
}

// AppLog fetches what the app recorded for connection id.
func AppLog(t testing.TB, p *Puma, connID string) WSAppLog {
	t.Helper()
	l, err := appLog(p, connID)
	if err != nil {
		t.Fatalf("AppLog(%s): %v", connID, err)
	}
	return l
}

func appLog(p *Puma, connID string) (WSAppLog, error) {
	var l WSAppLog
	code, body, err := get(p.Client(), p.URL+"/ws/_log?conn="+url.QueryEscape(connID), 5*time.Second)
	if err != nil {
		return l, err
	}
	if code != 200 {
		return l, fmt.Errorf("GET /ws/_log: status %d: %.200q", code, body)
	}
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		return l, fmt.Errorf("GET /ws/_log: %v in %.200q", err, body)
	}
	return l, nil
}

// WaitEvents polls the app's record of connection id until cond holds, and
// returns the record that satisfied it; past timeout it fails the test,
// showing the events the app had.
func WaitEvents(t testing.TB, p *Puma, connID string, timeout time.Duration, cond func(WSAppLog) bool) WSAppLog {
	t.Helper()
	return WaitEventsFor(t, p, connID, timeout, "the app's record to match", cond)
}

// WaitEventsFor is WaitEvents saying what it waits for when it fails.
func WaitEventsFor(t testing.TB, p *Puma, connID string, timeout time.Duration, what string, cond func(WSAppLog) bool) WSAppLog {
	t.Helper()
	var last WSAppLog
	var lastErr error
	ok := poll(timeout, func() bool {
		l, err := appLog(p, connID)
		if err != nil {
			lastErr = err
			return false
		}
		last = l
		return cond(l)
	})
	if !ok {
		t.Fatalf("timed out after %s waiting for %s on %s; the app had events %v (last error %v)",
			timeout, what, connID, last.Events(), lastErr)
	}
	return last
}

// WaitCloseEvent waits until the app has the close event of connection id.
func WaitCloseEvent(t testing.TB, p *Puma, connID string, timeout time.Duration) WSEvent {
	t.Helper()
	l := WaitEventsFor(t, p, connID, timeout, "the close event", func(l WSAppLog) bool {
		_, ok := l.Close()
		return ok
	})
	e, _ := l.Close()
	return e
}

// WaitOpen waits until the app has received the first event of connection
// id (its open event, unless the app asked for no open events).
func WaitOpen(t testing.TB, p *Puma, connID string, timeout time.Duration) WSAppLog {
	t.Helper()
	return WaitEventsFor(t, p, connID, timeout, "the open event", func(l WSAppLog) bool { return len(l.Events()) > 0 })
}

// WaitMessages waits until the app has received at least n message events
// from connection id.
func WaitMessages(t testing.TB, p *Puma, connID string, timeout time.Duration, n int) WSAppLog {
	t.Helper()
	return WaitEventsFor(t, p, connID, timeout, fmt.Sprintf("%d message events", n), func(l WSAppLog) bool {
		return len(l.Messages()) >= n
	})
}

// AppConns lists the connection ids whose accept request carried tag=tag.
func AppConns(t testing.TB, p *Puma, tag string) []string {
	t.Helper()
	code, body, err := get(p.Client(), p.URL+"/ws/_conns?tag="+url.QueryEscape(tag), 5*time.Second)
	if err != nil || code != 200 {
		t.Fatalf("GET /ws/_conns: status %d, %v", code, err)
	}
	var reply struct {
		Conns []string `json:"conns"`
	}
	if err := json.Unmarshal([]byte(body), &reply); err != nil {
		t.Fatalf("GET /ws/_conns: %v in %q", err, body)
	}
	return reply.Conns
}

var tagCounter atomic.Uint64

// NewTag is a tag unique within the run, for the tag= query parameter by
// which a test finds its connection's id at the app.
func NewTag(t testing.TB) string {
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	return fmt.Sprintf("%s-%d", name, tagCounter.Add(1))
}
