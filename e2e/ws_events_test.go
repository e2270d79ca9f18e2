package e2e

import (
	"fmt"
	"mime"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// Events: the webhooks Cablecar POSTs to the app (SPEC §3) and what it does
// with the app's replies.
//
// These are the group TestWebSocket/Events (see websocket_test.go); run one
// test, here testEventsReplies, with
//
//	go test -race -count=1 -run 'TestWebSocket/Events/Replies$' ./e2e/

// retryWait bounds a wait that includes Cablecar's retry backoff.
const retryWait = 15 * time.Second

// wsEventTests are TestWebSocket/Events/<name>, each the function
// testEvents<name>; they start in this order and run in parallel.
var wsEventTests = []wsTest{
	{"Lifecycle", testEventsLifecycle},
	{"Replies", testEventsReplies},
	{"OpenReply", testEventsOpenReply},
	{"BatchingWhileInFlight", testEventsBatchingWhileInFlight},
	{"State", testEventsState},
	{"StateAtLimit", testEventsStateAtLimit},
	{"SubscribePublish", testEventsSubscribePublish},
	{"CloseReply", testEventsCloseReply},
	{"Gone410", testEventsGone410},
	{"Retries", testEventsRetries},
	{"RetryAfter", testEventsRetryAfter},
	{"ForwardHeaders", testEventsForwardHeaders},
	{"RetryThenSuccess", testEventsRetryThenSuccess},
	{"EventsFilterAndPath", testEventsEventsFilterAndPath},
}

// open, text and binary messages and a client close arrive in order,
// numbered, signed, with the handshake's path, query and cookies.
func testEventsLifecycle(t *testing.T, e *wsEnv) {
	tag := NewTag(t)
	tgt := target("/ws/chat/life", "state", "abc", "tag", tag)
	h := http.Header{"Cookie": {"sid=s1"}, "Authorization": {"Bearer t0k"}}
	ws, _ := MustDialWS(t, e.c.URL+tgt, h)
	id := ConnID(t, e.p, tag)

	ws.Send("nothing")
	ws.SendBinary([]byte{0, 1, 2, 0xff})
	ws.ExpectBinary(wsWait, []byte{0, 1, 2, 0xff}) // the app echoes binary
	ws.Send("héllo ✓")
	code := ws.CloseWith(wsWait, 4001, "bye")
	t.Logf("the server answered the client's close 4001 with %d", code)

	WaitCloseEvent(t, e.p, id, wsWait)
	l := AppLog(t, e.p, id)
	want := []WSEvent{
		{ID: id + ":1", Type: "open"},
		{ID: id + ":2", Type: "message", Data: "nothing"},
		{ID: id + ":3", Type: "message", Data: "AAEC/w==", Binary: true},
		{ID: id + ":4", Type: "message", Data: "héllo ✓"},
		{ID: id + ":5", Type: "close", Code: 4001, Reason: "bye", By: "client"},
	}
	if got := l.Events(); !slices.Equal(got, want) {
		t.Fatalf("events:\n got %v\nwant %v", got, want)
	}
	for i, b := range l.Batches {
		what := fmt.Sprintf("webhook %d", i+1)
		if b.Method != "POST" || b.PathAndQuery() != tgt {
			t.Errorf("%s: %s %s, want POST %s", what, b.Method, b.PathAndQuery(), tgt)
		}
		ct, _ := b.Header("Content-Type")
		if mt, _, _ := mime.ParseMediaType(ct); mt != "application/json" {
			t.Errorf("%s: Content-Type %q", what, ct)
		}
		for name, v := range map[string]string{"Cablecar-Connection-Id": id, "Cookie": "sid=s1", "Authorization": "Bearer t0k"} {
			if got, _ := b.Header(name); got != v {
				t.Errorf("%s: %s %q, want %q", what, name, got, v)
			}
		}
		if v, ok := b.Header("Cablecar-Upgrade"); ok {
			t.Errorf("%s: Cablecar-Upgrade %q on an event", what, v)
		}
		if b.Body == nil {
			t.Fatalf("%s: body not JSON: %.200q", what, b.Raw)
		}
		if b.Body.Connection.ID != id || b.Body.Connection.State == nil || *b.Body.Connection.State != "abc" {
			t.Errorf("%s: connection %+v, want id %s state abc", what, b.Body.Connection, id)
		}
		if b.Status < 200 || b.Status > 299 {
			t.Errorf("%s: the app answered %d", what, b.Status)
		}
		sig, _ := b.Header("Cablecar-Signature")
		verifySignature(t, what, sig, []byte(b.Raw))
	}
	for eid, n := range l.Attempts {
		if n != 1 {
			t.Errorf("event %s POSTed %d times with every answer a success", eid, n)
		}
	}
	checkOneInFlight(t, l)
}

func testEventsReplies(t *testing.T, e *wsEnv) {
	ws, id := ConnectWS(t, e.c, e.p, "/ws/chat/replies", nil)
	ws.Send("echo:hi")
	ws.ExpectText(wsWait, "hi")
	ws.Send("text:plain words, not JSON")
	ws.ExpectText(wsWait, "plain words, not JSON")
	ws.Send("bin")
	ws.ExpectBinary(wsWait, []byte{0, 1, 2, 0xff})
	ws.SendBinary([]byte("raw\x00bytes"))
	ws.ExpectBinary(wsWait, []byte("raw\x00bytes"))
	// A 4xx other than 410 drops the events and keeps the connection.
	// The next message waits for the 404, so as not to share its fate.
	ws.Send("status:404")
	WaitEventsFor(t, e.p, id, wsWait, "the 404 answer", func(l WSAppLog) bool {
		n := len(l.Batches)
		return n > 0 && l.Batches[n-1].Status == 404
	})
	ws.Send("echo:still here")
	ws.ExpectText(wsWait, "still here")
}

func testEventsOpenReply(t *testing.T, e *wsEnv) {
	ws, _ := ConnectWS(t, e.c, e.p, target("/ws/chat/onopen", "on_open", "echo:welcome"), nil)
	ws.ExpectText(wsWait, "welcome")
}

// Events that queue while one webhook is in flight go in the next one,
// together.
func testEventsBatchingWhileInFlight(t *testing.T, e *wsEnv) {
	ws, id := ConnectWS(t, e.c, e.p, "/ws/chat/batch", nil)
	WaitEventsFor(t, e.p, id, wsWait, "the open event answered", func(l WSAppLog) bool {
		return len(l.Batches) > 0 && l.Batches[len(l.Batches)-1].Status != 0
	})
	ws.Send("slow:1")
	WaitEventsFor(t, e.p, id, wsWait, "the slow message in flight", func(l WSAppLog) bool {
		return len(l.Messages()) == 1
	})
	ws.Send("echo:a")
	ws.Send("echo:b")
	ws.ExpectText(wsWait, "a")
	ws.ExpectText(wsWait, "b")
	l := AppLog(t, e.p, id)
	checkOneInFlight(t, l)
	slow, after := l.BatchesWith(id+":2"), l.BatchesWith(id+":3")
	if len(slow) != 1 || len(after) != 1 {
		t.Fatalf("batches: %d with the slow message, %d with the next; want 1 each", len(slow), len(after))
	}
	var data []string
	for _, ev := range after[0].Body.Events {
		data = append(data, ev.Data)
	}
	if !slices.Equal(data, []string{"echo:a", "echo:b"}) {
		t.Errorf("the webhook after the slow one carried %q, want both queued messages together", data)
	}
}

// A state reply is echoed on every later webhook.
func testEventsState(t *testing.T, e *wsEnv) {
	ws, id := ConnectWS(t, e.c, e.p, target("/ws/chat/state", "state", "s0"), nil)
	ws.Send("state:s1")
	ws.Send("echo:sync")
	ws.ExpectText(wsWait, "sync")
	ws.Send("nothing")
	ws.CloseWith(wsWait, 1000, "")
	WaitCloseEvent(t, e.p, id, wsWait)
	l := AppLog(t, e.p, id)
	set := -1
	for i, b := range l.Batches {
		state := "<none>"
		if b.Body.Connection.State != nil {
			state = *b.Body.Connection.State
		}
		want := "s1"
		if set < 0 || i <= set {
			want = "s0"
		}
		if state != want {
			t.Errorf("webhook %d (%v): state %q, want %q", i+1, b.Body.Events, state, want)
		}
		if slices.ContainsFunc(b.Body.Events, func(ev WSEvent) bool { return ev.Data == "state:s1" }) {
			set = i
		}
	}
	if set < 0 || set == len(l.Batches)-1 {
		t.Fatalf("no webhook after the state reply: %v", l.Events())
	}
}

// A Cablecar-State of the largest size allowed, 4 KiB, is kept whole.
func testEventsStateAtLimit(t *testing.T, e *wsEnv) {
	state := strings.Repeat("s", 4096)
	_, id := ConnectWS(t, e.c, e.p, target("/ws/chat/bigstate", "state", state), nil)
	l := WaitOpen(t, e.p, id, wsWait)
	if got := l.Batches[0].Body.Connection.State; got == nil || *got != state {
		t.Errorf("a 4 KiB state did not come back whole")
	}
}

// sub/unsub replies, and publish replies with and without except_self,
// between two clients.
func testEventsSubscribePublish(t *testing.T, e *wsEnv) {
	ch, bOnly := channel("chat"), channel("b-only")
	a, _ := ConnectWS(t, e.c, e.p, "/ws/chat/pubsub", nil)
	b, _ := ConnectWS(t, e.c, e.p, target("/ws/chat/pubsub", "subscribe", bOnly), nil)
	// Replies are applied in order, so once the echo is back the
	// subscription is in effect.
	a.Send("sub:" + ch)
	a.Send("echo:a in")
	a.ExpectText(wsWait, "a in")
	b.Send("sub:" + ch)
	b.Send("echo:b in")
	b.ExpectText(wsWait, "b in")

	a.Send("pub:" + ch + ":from a")
	b.ExpectText(wsWait, "from a")
	a.Send("puball:" + ch + ":to all")
	a.ExpectText(wsWait, "to all") // not "from a": except_self left a out
	b.ExpectText(wsWait, "to all")

	b.Send("unsub:" + ch)
	b.Send("echo:b out")
	b.ExpectText(wsWait, "b out")
	a.Send("puball:" + ch + ":after unsub")
	a.ExpectText(wsWait, "after unsub")
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": bOnly, "data": "marker"}, "")
	b.ExpectText(wsWait, "marker") // not "after unsub"
}

func testEventsCloseReply(t *testing.T, e *wsEnv) {
	ws, id := ConnectWS(t, e.c, e.p, "/ws/chat/closereply", nil)
	ws.Send("close:4002:see ya")
	if code, reason := ws.ExpectClose(wsWait); code != 4002 || reason != "see ya" {
		t.Errorf("closed with %d %q, want 4002 \"see ya\"", code, reason)
	}
	if ev := WaitCloseEvent(t, e.p, id, wsWait); ev.By != "app" {
		t.Errorf("close event %v, want by app", ev)
	}
}

func testEventsGone410(t *testing.T, e *wsEnv) {
	ws, id := ConnectWS(t, e.c, e.p, "/ws/chat/gone", nil)
	ws.Send("gone")
	code, reason := ws.ExpectClose(wsWait)
	t.Logf("410 closed the client with %d %q", code, reason)
	if ev := WaitCloseEvent(t, e.p, id, wsWait); ev.By != "app" {
		t.Errorf("close event %v, want by app", ev)
	}
}

// callback.retries 1 and callback.timeout 1s: a message whose webhook
// keeps failing or timing out closes the client with 1011, and the close
// event, retried for longer, still arrives.
func testEventsRetries(t *testing.T, e *wsEnv) {
	c := e.cablecar(t, map[string]any{"callback.retries": 1, "callback.timeout": "1s"})
	for _, tc := range []struct{ name, msg string }{
		{"Failing", "fail"},
		{"TimingOut", "slow:2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ws, id := ConnectWS(t, c, e.p, "/ws/chat/fail", nil)
			ws.Send(tc.msg)
			ws.ExpectCloseCode(retryWait, 1011)
			if ev := WaitCloseEvent(t, e.p, id, retryWait); ev.By != "upstream" || ev.Code != 1011 {
				t.Errorf("close event %v, want 1011 by upstream", ev)
			}
			l := AppLog(t, e.p, id)
			failed := eventWith(t, l, tc.msg)
			if n := l.Attempts[failed.ID]; n != 2 {
				t.Errorf("event %s POSTed %d times; with callback.retries 1, want 2", failed.ID, n)
			}
		})
	}
	t.Run("CloseEventRetriedLonger", func(t *testing.T) {
		t.Parallel()
		ws, id := ConnectWS(t, c, e.p, target("/ws/chat/closefails", "on_close", "failn:3"), nil)
		ws.CloseWith(wsWait, 1000, "")
		l := WaitEventsFor(t, e.p, id, retryWait, "the close event answered 2xx", func(l WSAppLog) bool {
			ev, ok := l.Close()
			if !ok {
				return false
			}
			for _, b := range l.BatchesWith(ev.ID) {
				if b.Status >= 200 && b.Status <= 299 {
					return true
				}
			}
			return false
		})
		ev, _ := l.Close()
		if n := l.Attempts[ev.ID]; n != 4 {
			t.Errorf("close event POSTed %d times, want 4 (3 failures, then success)", n)
		}
	})
}

// A 429 with Retry-After is retried no sooner than it says.
func testEventsRetryAfter(t *testing.T, e *wsEnv) {
	ws, id := ConnectWS(t, e.c, e.p, "/ws/chat/retryafter", nil)
	ws.Send("retryafter:1")
	ws.Send("echo:after")
	ws.ExpectText(retryWait, "after")
	l := AppLog(t, e.p, id)
	tries := l.BatchesWith(eventWith(t, l, "retryafter:1").ID)
	if len(tries) != 2 || tries[0].Status != 429 {
		t.Fatalf("%d attempts, first answered %d; want 2, 429", len(tries), tries[0].Status)
	}
	if gap := tries[1].ReceivedAt - tries[0].AnsweredAt; gap < 0.9 {
		t.Errorf("retried %.3fs after a 429 with Retry-After: 1", gap)
	}
}

// callback.forward_headers replaces the default Cookie, Authorization.
func testEventsForwardHeaders(t *testing.T, e *wsEnv) {
	c := e.cablecar(t, map[string]any{"callback.forward_headers": []string{"X-Tenant"}})
	h := http.Header{"X-Tenant": {"acme"}, "Cookie": {"sid=s1"}, "Authorization": {"Bearer t"}}
	ws, id := ConnectWS(t, c, e.p, "/ws/chat/fwd", h)
	ws.Send("echo:x")
	ws.ExpectText(wsWait, "x")
	l := AppLog(t, e.p, id)
	if a := l.Accepts[0]; len(a.Headers) > 0 {
		if v, _ := a.Header("Cookie"); v != "sid=s1" {
			t.Errorf("accept request Cookie %q: the accept GET carries every header", v)
		}
	}
	for i, b := range l.Batches {
		if v, _ := b.Header("X-Tenant"); v != "acme" {
			t.Errorf("webhook %d: X-Tenant %q, want acme", i+1, v)
		}
		for _, name := range []string{"Cookie", "Authorization"} {
			if v, ok := b.Header(name); ok {
				t.Errorf("webhook %d: %s %q, not in callback.forward_headers", i+1, name, v)
			}
		}
	}
}

// A failure then a success: the same event id twice, delivered once.
func testEventsRetryThenSuccess(t *testing.T, e *wsEnv) {
	ws, id := ConnectWS(t, e.c, e.p, "/ws/chat/failonce", nil)
	ws.Send("failonce")
	ws.Send("echo:after retry")
	ws.ExpectText(retryWait, "after retry")
	l := AppLog(t, e.p, id)
	failonce := eventWith(t, l, "failonce")
	tries := l.BatchesWith(failonce.ID)
	if len(tries) != 2 || tries[0].Status != 500 || tries[1].Status < 200 || tries[1].Status > 299 {
		var codes []int
		for _, b := range tries {
			codes = append(codes, b.Status)
		}
		t.Fatalf("event %s: answers %v, want [500 2xx]", failonce.ID, codes)
	}
	// The next message may ride along in the retry, but is never
	// delivered before the failed one, nor twice.
	echo := eventWith(t, l, "echo:after retry")
	var delivered []WSAppRequest
	for _, b := range l.BatchesWith(echo.ID) {
		if b.Status >= 200 && b.Status <= 299 {
			delivered = append(delivered, b)
		}
	}
	if len(delivered) != 1 || delivered[0].ReceivedAt < tries[1].ReceivedAt {
		t.Errorf("%s was delivered %d times, or before %s succeeded", echo.ID, len(delivered), failonce.ID)
	}
	if ids := eventIDs(l.Events()); !slices.Equal(ids, numbered(id, len(ids))) {
		t.Errorf("event ids %v, want 1, 2, 3… in order", ids)
	}
	checkOneInFlight(t, l)
}

// Cablecar-Events and Cablecar-Events-Path from the accept response.
func testEventsEventsFilterAndPath(t *testing.T, e *wsEnv) {
	ws, id := ConnectWS(t, e.c, e.p, target("/ws/chat/filter", "events", "open, close", "events_path", "/ws/other/filtered?via=path"), nil)
	ws.Send("echo:must not arrive")
	ws.CloseWith(wsWait, 1000, "done")
	WaitCloseEvent(t, e.p, id, wsWait)
	l := AppLog(t, e.p, id)
	var types []string
	for _, ev := range l.Events() {
		types = append(types, ev.Type)
	}
	if !slices.Equal(types, []string{"open", "close"}) {
		t.Errorf("event types %v, want [open close]", types)
	}
	for _, b := range l.Batches {
		if b.PathAndQuery() != "/ws/other/filtered?via=path" {
			t.Errorf("webhook POSTed to %s, want /ws/other/filtered?via=path", b.PathAndQuery())
		}
	}
}

// eventWith is the first event the app received whose data is data.
func eventWith(t *testing.T, l WSAppLog, data string) WSEvent {
	t.Helper()
	for _, ev := range l.Events() {
		if ev.Type == "message" && ev.Data == data {
			return ev
		}
	}
	t.Fatalf("the app got no message %q: %v", data, l.Events())
	return WSEvent{}
}

func eventIDs(evs []WSEvent) []string {
	var ids []string
	for _, ev := range evs {
		ids = append(ids, ev.ID)
	}
	return ids
}

// numbered is id:1 … id:n.
func numbered(id string, n int) []string {
	var ids []string
	for i := 1; i <= n; i++ {
		ids = append(ids, fmt.Sprintf("%s:%d", id, i))
	}
	return ids
}

// checkOneInFlight fails if a webhook of the connection arrived before the
// app had answered the one before it.
func checkOneInFlight(t *testing.T, l WSAppLog) {
	t.Helper()
	for i := 1; i < len(l.Batches); i++ {
		prev, cur := l.Batches[i-1], l.Batches[i]
		if prev.AnsweredAt == 0 || cur.ReceivedAt < prev.AnsweredAt {
			t.Errorf("webhook %d (%v) arrived while webhook %d (%v) was in flight",
				i+1, cur.Body.Events, i, prev.Body.Events)
		}
	}
}

// closeEventsBy waits for the close events of ids and fails unless each was
// by by.
func closeEventsBy(t *testing.T, p *Puma, ids []string, by string, timeout time.Duration) {
	t.Helper()
	for _, id := range ids {
		if ev := WaitCloseEvent(t, p, id, timeout); ev.By != by {
			t.Errorf("close event %v, want by %s", ev, by)
		}
	}
}
