package upgrade

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/cablecar/cablecar/actioncable"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/pubsub"
)

// ActionCable connections without sockets: a bare hub, connections that
// queue what they are sent, commands and replies handed to them directly.
// With no event asked for (events 0), a command changes the connection's
// subscriptions and reaches no app.

const acTestSecret = "turbo"

func acHub(t *testing.T, b pubsub.Broker) *Hub {
	t.Helper()
	h := bareHub(t, b, Config{SendQueue: 100})
	h.ac = newHubAC(ActionCableConfig{TurboStreamsSecret: acTestSecret}, prometheus.NewRegistry())
	return h
}

func (h *Hub) acConn(id string) *Conn {
	c := h.bareConn(id)
	c.ac = newACConn(actioncable.V1)
	h.add(c)
	return c
}

func (c *Conn) cmd(t *testing.T, kind actioncable.Kind, id string) {
	t.Helper()
	c.acCommand(actioncable.Command{Kind: kind, Identifier: id, Data: "{}"}.AppendJSON(nil), false)
}

func (c *Conn) takeQueue() []outgoing {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.queue
	c.queue = nil
	c.queued.Store(0)
	return q
}

func frames(q []outgoing) []string {
	out := make([]string, len(q))
	for i, o := range q {
		out[i] = string(payload(o))
	}
	return out
}

// payload is what o carries: its data, or a built frame's payload.
func payload(o outgoing) []byte {
	if o.frame == nil {
		return o.data
	}
	switch n := o.frame[1] & 0x7f; n {
	case 126:
		return o.frame[4:]
	case 127:
		return o.frame[10:]
	default:
		return o.frame[2:]
	}
}

func streamReply(refs ...callback.StreamRef) *callback.Reply {
	return &callback.Reply{ActionCable: &callback.ACReply{Stream: refs}}
}

// A broadcast to a stream reaches each (connection, identifier) streaming
// it: one frame per identifier, the same bytes for every connection; the
// broker hears of the stream once, as of any channel.
func TestACBroadcastPerIdentifier(t *testing.T) {
	b := newRecBroker(t)
	h := acHub(t, b)
	a, c := h.acConn("a"), h.acConn("c")
	raw := h.bareConn("raw")
	if err := raw.subscribe("s"); err != nil {
		t.Fatal(err)
	}
	a.cmd(t, actioncable.Subscribe, "I1")
	a.cmd(t, actioncable.Subscribe, "I2")
	c.cmd(t, actioncable.Subscribe, "I1")
	a.Apply(streamReply(callback.StreamRef{Identifier: "I1", Stream: "s"}, callback.StreamRef{Identifier: "I2", Stream: "s"}))
	c.Apply(streamReply(callback.StreamRef{Identifier: "I1", Stream: "s"}))
	if n, _ := h.members("s"); n != 3 {
		t.Fatalf("s has %d members, want 3 (two ActionCable connections and a raw one)", n)
	}
	if got := len(b.history()); got != 1 {
		t.Fatalf("%d broker calls %v, want one Subscribe", got, b.history())
	}
	h.Deliver(pubsub.Message{Channel: "s", Data: []byte(`{"n":1}`)})
	qa, qc := a.takeQueue(), c.takeQueue()
	want := []string{`{"identifier":"I1","message":{"n":1}}`, `{"identifier":"I2","message":{"n":1}}`}
	if got := frames(qa); !slices.Equal(got, want) {
		t.Fatalf("a got %q, want %q", got, want)
	}
	if got := frames(qc); !slices.Equal(got, want[:1]) {
		t.Fatalf("c got %q, want %q", got, want[:1])
	}
	if &qa[0].frame[0] != &qc[0].frame[0] {
		t.Fatal("the frame of (s, I1) was built twice: it must be shared")
	}
	if got := raw.queuedData(); !slices.Equal(got, []string{"prepared"}) {
		t.Fatalf("the raw member got %q, want the broadcast verbatim", got)
	}
	// Not JSON: a JSON string; except leaves its connection out.
	h.Deliver(pubsub.Message{Channel: "s", Data: []byte("<p>"), Except: "a"})
	if got := frames(a.takeQueue()); len(got) != 0 {
		t.Fatalf("a, left out, got %q", got)
	}
	if got := frames(c.takeQueue()); !slices.Equal(got, []string{`{"identifier":"I1","message":"<p>"}`}) {
		t.Fatalf("c got %q", got)
	}
}

// Unsubscribe drops the identifier's streams: no more frames for it, and
// the channel is left when no identifier streams it any more.
func TestACUnsubscribeDropsStreams(t *testing.T) {
	b := newRecBroker(t)
	h := acHub(t, b)
	a := h.acConn("a")
	a.cmd(t, actioncable.Subscribe, "I1")
	a.cmd(t, actioncable.Subscribe, "I2")
	a.Apply(streamReply(callback.StreamRef{Identifier: "I1", Stream: "s"}, callback.StreamRef{Identifier: "I2", Stream: "s"},
		callback.StreamRef{Identifier: "I1", Stream: "t"}))
	a.cmd(t, actioncable.Unsubscribe, "I1")
	h.Deliver(pubsub.Message{Channel: "s", Data: []byte(`1`)})
	h.Deliver(pubsub.Message{Channel: "t", Data: []byte(`2`)})
	if got := frames(a.takeQueue()); !slices.Equal(got, []string{`{"identifier":"I2","message":1}`}) {
		t.Fatalf("got %q, want I2's frame of s only", got)
	}
	if b.subscribed("t") || !b.subscribed("s") {
		t.Fatalf("broker holds %v, want s only", b.held())
	}
	// stop_stream without a stream stops all of I2's.
	a.Apply(&callback.Reply{ActionCable: &callback.ACReply{StopStream: []callback.StreamRef{{Identifier: "I2"}}}})
	if n, known := h.members("s"); n != 0 || known {
		t.Fatalf("s has %d members (known %v) after its last stream stopped", n, known)
	}
	if got := a.channelsOf(); len(got) != 0 {
		t.Fatalf("connection still lists %q", got)
	}
	if got := a.acIdentifiers(); !slices.Equal(got, []string{"I2"}) {
		t.Fatalf("identifiers %q, want I2 (stopping streams is not unsubscribing)", got)
	}
}

// A reply confirms, rejects, transmits and sets channel_state; a stream
// for an identifier not subscribed is ignored; a reject ends the
// subscription.
func TestACApplyReply(t *testing.T) {
	h := acHub(t, newRecBroker(t))
	a := h.acConn("a")
	a.cmd(t, actioncable.Subscribe, "I1")
	a.cmd(t, actioncable.Subscribe, "I2")
	a.Apply(&callback.Reply{ActionCable: &callback.ACReply{
		Confirm:      []string{"I1", "nope"},
		Reject:       []string{"I2"},
		Stream:       []callback.StreamRef{{Identifier: "nope", Stream: "x"}},
		Transmit:     []callback.Transmit{{Identifier: "I1", Message: []byte(`{"a":[1]}`)}},
		ChannelState: map[string]string{"I1": "st"},
	}})
	want := []string{
		`{"identifier":"I2","type":"reject_subscription"}`,
		`{"identifier":"I1","type":"confirm_subscription"}`,
		`{"identifier":"I1","message":{"a":[1]}}`,
	}
	if got := frames(a.takeQueue()); !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := a.acIdentifiers(); !slices.Equal(got, []string{"I1"}) {
		t.Fatalf("identifiers %q, want I1", got)
	}
	if st := a.Info().ChannelStates; st["I1"] != "st" || len(st) != 1 {
		t.Fatalf("channel states %v", st)
	}
	if n, known := h.members("x"); n != 0 || known {
		t.Fatal("a stream for an identifier not subscribed was joined")
	}
}

// Malformed commands are counted by reason and change nothing.
func TestACMalformedCommands(t *testing.T) {
	h := acHub(t, newRecBroker(t))
	a := h.acConn("a")
	a.acCommand([]byte("nope"), false)
	a.acCommand([]byte{1}, true)
	a.acCommand([]byte(`{"command":"whisper","identifier":"x"}`), false)
	a.cmd(t, actioncable.Message, "I1")
	a.cmd(t, actioncable.Unsubscribe, "I1")
	a.cmd(t, actioncable.Subscribe, "I1")
	a.cmd(t, actioncable.Subscribe, "I1")
	m := h.ac.metrics.malformed
	for why, want := range map[string]float64{"not_json": 2, "unknown_command": 1, "not_subscribed": 2, "already_subscribed": 1} {
		var d dto.Metric
		if err := m.WithLabelValues(why).Write(&d); err != nil {
			t.Fatal(err)
		}
		if got := d.Counter.GetValue(); got != want {
			t.Errorf("%s counted %v, want %v", why, got, want)
		}
	}
	if got := a.acIdentifiers(); !slices.Equal(got, []string{"I1"}) {
		t.Fatalf("identifiers %q", got)
	}
}

// The Turbo fast lane confirms a signed name itself and streams from it;
// a tampered one is rejected.
func TestACTurboFastLane(t *testing.T) {
	h := acHub(t, newRecBroker(t))
	a := h.acConn("a")
	signed := actioncable.NewStreamVerifier(acTestSecret).Sign("room:1")
	id := `{"channel":"Turbo::StreamsChannel","signed_stream_name":"` + signed + `"}`
	bad := `{"channel":"Turbo::StreamsChannel","signed_stream_name":"` + signed + `0"}`
	a.cmd(t, actioncable.Subscribe, id)
	a.cmd(t, actioncable.Subscribe, bad)
	got := frames(a.takeQueue())
	if len(got) != 2 || !strings.Contains(got[0], "confirm_subscription") || !strings.Contains(got[1], "reject_subscription") {
		t.Fatalf("got %q, want a confirm then a reject", got)
	}
	h.Deliver(pubsub.Message{Channel: "room:1", Data: []byte("<turbo-stream>")})
	if got := frames(a.takeQueue()); len(got) != 1 || !strings.Contains(got[0], `"message":"<turbo-stream>"`) {
		t.Fatalf("got %q, want the Turbo stream", got)
	}
}

// Every close Cablecar makes is preceded by a disconnect frame saying why
// and whether to reconnect.
func TestACDisconnectBeforeClose(t *testing.T) {
	h := acHub(t, newRecBroker(t))
	for _, tc := range []struct {
		by, reason string
		reconnect  bool
		set        bool // the closer set the disconnect (a reply, /close)
	}{
		{ByExpired, "token_expired", false, false},
		{ByShutdown, "server_restart", true, false},
		{ByNodeLost, "server_restart", true, false},
		{ByRateLimit, "rate_limit", true, false},
		{BySlow, "slow", true, false},
		{ByApp, "banned", false, true},
	} {
		c := h.acConn("c-" + tc.by)
		c.acSend([]byte("before"))
		if tc.set {
			c.acSetDisconnect(tc.reason, tc.reconnect)
		}
		c.closeWith(websocket.ClosePolicyViolation, "x", tc.by)
		want := []string{string(actioncable.AppendDisconnect(nil, tc.reason, tc.reconnect))}
		if tc.by != BySlow { // a slow client's queue is dropped
			want = append([]string{"before"}, want...)
		}
		if got := frames(c.takeQueue()); !slices.Equal(got, want) {
			t.Errorf("by %s: queued %q, want %q", tc.by, got, want)
		}
	}
}

// The protocol ping is due on the first tick, then once per interval,
// whatever the tick.
func TestACPingSchedule(t *testing.T) {
	a := newHubAC(ActionCableConfig{PingInterval: time.Second}, prometheus.NewRegistry())
	t0 := time.Unix(1700000000, 0)
	if f := a.ping(t0); string(f) != `{"type":"ping","message":1700000000}` {
		t.Fatalf("first tick: %q", f)
	}
	if f := a.ping(t0.Add(900 * time.Millisecond)); f != nil {
		t.Fatalf("within the interval: %q", f)
	}
	if f := a.ping(t0.Add(1100 * time.Millisecond)); f == nil {
		t.Fatal("no ping after the interval")
	}
	var nilHub *hubAC
	if nilHub.ping(t0) != nil {
		t.Fatal("a hub without ActionCable pings")
	}
}

// A close of a channel (admin /close with "channel") closes every
// connection here subscribed to it — raw subscribers and ActionCable
// connections streaming it, told disconnect remote with the request's
// reconnect — and no other.
func TestCloseChannel(t *testing.T) {
	h := acHub(t, newRecBroker(t))
	a, other := h.acConn("a"), h.acConn("other")
	raw := h.bareConn("raw")
	if err := raw.subscribe("s"); err != nil {
		t.Fatal(err)
	}
	a.cmd(t, actioncable.Subscribe, "I1")
	a.Apply(streamReply(callback.StreamRef{Identifier: "I1", Stream: "s"}))
	other.cmd(t, actioncable.Subscribe, "I1")
	other.Apply(streamReply(callback.StreamRef{Identifier: "I1", Stream: "t"}))
	h.Deliver(pubsub.Message{Channel: "s", Close: &pubsub.ChannelClose{Code: 4003, Reason: "moved", NoReconnect: true}})
	for _, c := range []*Conn{a, raw} {
		if _, _, end := c.queueState(); end == nil || end.code != 4003 || end.reason != "moved" || end.by != ByApp {
			t.Fatalf("%s: end %+v, want 4003 moved by app", c.id, end)
		}
	}
	if got, want := frames(a.takeQueue()), []string{string(actioncable.AppendDisconnect(nil, actioncable.ReasonRemote, false))}; !slices.Equal(got, want) {
		t.Fatalf("a got %q, want %q", got, want)
	}
	if _, _, end := other.queueState(); end != nil {
		t.Fatalf("a connection streaming another channel was closed: %+v", end)
	}
}

// An ActionCable fan-out split over several goroutines reaches every
// subscription once, one publisher's broadcasts in the order published,
// and every connection with the same (stream, identifier) gets the same
// frame, built once for the whole broadcast, whichever part it was in.
func TestACFanoutSplit(t *testing.T) {
	h := acHub(t, newRecBroker(t))
	const n, msgs = 3*fanoutPart + 7, 20
	conns := make([]*Conn, n)
	for i := range conns {
		c := h.acConn("c" + strconv.Itoa(i))
		c.ac.subs = []*acSub{{id: intern("I1"), streams: []atom{intern("s")}}}
		if i%3 == 0 {
			c.ac.subs = append(c.ac.subs, &acSub{id: intern("I2"), streams: []atom{intern("t"), intern("s")}})
		}
		conns[i] = c
	}
	for m := range msgs {
		acFanout(conns, pubsub.Message{Channel: "s", Data: []byte(`{"n":` + strconv.Itoa(m) + `}`)}, 4)
	}
	shared := map[string]*byte{} // the first frame seen per (message, identifier)
	for i, c := range conns {
		q := c.takeQueue()
		var want []string
		for m := range msgs {
			for _, id := range atomStrings(c.ac.streamIDs(nil, intern("s"))) {
				want = append(want, `{"identifier":"`+id+`","message":{"n":`+strconv.Itoa(m)+`}}`)
			}
		}
		if got := frames(q); !slices.Equal(got, want) {
			t.Fatalf("connection %d got %q, want %q", i, got, want)
		}
		for k, o := range q {
			key := want[k]
			if p, ok := shared[key]; !ok {
				shared[key] = &o.frame[0]
			} else if p != &o.frame[0] {
				t.Fatalf("connection %d: the frame %s was built more than once", i, key)
			}
		}
	}
}
