package e2e

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// Several Cablecar nodes sharing one Redis act as one (SPEC §3 last
// paragraph, §4): a broadcast, a /send or a /close reaches a connection
// whichever node it is on, and each node subscribes in Redis only to the
// channels its own clients listen to.
//
// TestMultiNode starts three nodes and runs its subtests against them, each
// a function multiNode<name> (NoMissAfterReady is multiNodeNoMiss). Run one
// with
//
//	go test -race -count=1 -run 'TestMultiNode/AdminSend$' ./e2e/

const (
	// brokerWait bounds what crosses Redis: a broadcast, a command to
	// another node.
	brokerWait = 10 * time.Second
	// leaseTTL is the broker.lease_ttl the multi-node tests run with.
	leaseTTL = 2 * time.Second
	// nodeLostWait is how soon after a node dies the app must have the
	// close events of its connections.
	nodeLostWait = leaseTTL + 10*time.Second
	// defaultPrefix is broker.prefix when the test does not set it.
	defaultPrefix = "cablecar:"
	// internalMark starts the Redis channels a node uses for itself
	// (<prefix>~…), which the channel checks ignore.
	internalMark = "~"
)

// startNodes starts n binaries in front of p sharing the broker at url,
// with a short lease and config over that, and waits until each says it is
// ready (its broker connected).
//
// The pong timeout is long: a test client answers pings only while it
// reads, and these tests leave clients unread while they wait for other
// nodes; heartbeats are not what they test.
func startNodes(t *testing.T, p *Puma, n int, url string, config map[string]any) []*Cablecar {
	t.Helper()
	cfg := map[string]any{
		"broker.url":             url,
		"broker.lease_ttl":       leaseTTL.String(),
		"websocket.pong_timeout": "60s",
	}
	for k, v := range config {
		cfg[k] = v
	}
	nodes := make([]*Cablecar, n)
	for i := range nodes {
		nodes[i] = StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: cfg})
	}
	for _, c := range nodes {
		WaitFor(t, 15*time.Second, "/readyz 200 on "+c.AdminAddr, func() bool { return c.AdminStatus("/readyz") == 200 })
	}
	return nodes
}

// joinWS connects to node c on path (a path of the test's own under /ws/)
// subscribed to channels, and returns once the client has read its first
// message: by then its subscriptions are in effect on every node, so a
// message published afterwards must reach it.
func joinWS(t *testing.T, c *Cablecar, p *Puma, path string, channels ...string) (*WSClient, string) {
	t.Helper()
	tgt := path
	if len(channels) > 0 {
		tgt = WithQuery(tgt, "subscribe", strings.Join(channels, ","))
	}
	ws, id := ConnectWS(t, c, p, WithQuery(tgt, "first", "ready"), nil)
	ws.ExpectText(wsWait, "ready")
	return ws, id
}

// publishRaw is PUBLISH <prefix><ch> payload, as any Redis client of the
// app would do it, and returns how many Redis subscribers got it.
func publishRaw(t *testing.T, r *Redis, prefix, ch string, payload []byte) int64 {
	t.Helper()
	n, err := r.Publish(prefix+ch, payload)
	if err != nil {
		t.Fatalf("PUBLISH %s%s: %v", prefix, ch, err)
	}
	return n
}

// numSub is how many Redis connections are subscribed to <prefix><ch>.
func numSub(t *testing.T, r *Redis, prefix, ch string) int64 {
	t.Helper()
	n, err := r.NumSub(prefix + ch)
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB %s%s: %v", prefix, ch, err)
	}
	return n
}

// appChannels are the channels under prefix some node is subscribed to in
// Redis, prefix removed, the nodes' own internal channels left out.
func appChannels(r *Redis, prefix string) ([]string, error) {
	all, err := r.Channels(prefix + "*")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ch := range all {
		name := strings.TrimPrefix(ch, prefix)
		if !strings.HasPrefix(name, internalMark) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// waitNumSub waits until <prefix><ch> has want Redis subscribers.
func waitNumSub(t *testing.T, r *Redis, prefix, ch string, want int64, why string) {
	t.Helper()
	var got int64
	var err error
	if !poll(brokerWait, func() bool {
		got, err = r.NumSub(prefix + ch)
		return err == nil && got == want
	}) {
		t.Fatalf("%s: PUBSUB NUMSUB %s%s = %d (%v) after %s, want %d", why, prefix, ch, got, err, brokerWait, want)
	}
}

// closeBatches are the event POSTs the app received for a connection that
// carried a close event, retries included.
func closeBatches(l WSAppLog) []WSAppRequest {
	var out []WSAppRequest
	for _, b := range l.Batches {
		if b.Body == nil {
			continue
		}
		for _, e := range b.Body.Events {
			if e.Type == "close" {
				out = append(out, b)
				break
			}
		}
	}
	return out
}

// closeEventsIn are the close events in the batches, in arrival order.
func closeEventsIn(batches []WSAppRequest) []WSEvent {
	var out []WSEvent
	for _, b := range batches {
		for _, e := range b.Body.Events {
			if e.Type == "close" {
				out = append(out, e)
			}
		}
	}
	return out
}

// waitCloseBatch waits until the app has received a POST carrying the close
// event of connection id, whatever the event's id (an id that collides with
// an earlier event would hide it from WSAppLog.Close), and returns the log.
func waitCloseBatch(t *testing.T, p *Puma, id string, timeout time.Duration) WSAppLog {
	t.Helper()
	return WaitEventsFor(t, p, id, timeout, "a close event", func(l WSAppLog) bool { return len(closeBatches(l)) > 0 })
}

// expectTexts reads len(want) messages from ws and fails unless they are
// the texts of want, in any order: messages that reach a node by different
// routes need not keep the order they were sent in.
func expectTexts(t *testing.T, ws *WSClient, timeout time.Duration, want ...string) {
	t.Helper()
	var got []string
	for range want {
		kind, data, err := ws.Read(timeout)
		if err != nil {
			t.Fatalf("got %q of %q, then: %v", got, want, err)
		}
		if kind != TextMessage {
			t.Fatalf("got %s %.100q after %q, want the texts %q", kindName(kind), data, got, want)
		}
		got = append(got, string(data))
	}
	slices.Sort(got)
	w := slices.Sorted(slices.Values(want))
	if !slices.Equal(got, w) {
		t.Fatalf("got the texts %q, want %q (any order)", got, w)
	}
}

// utf8Payload is n bytes of valid UTF-8 (one-, two-, three- and four-byte
// runes, and an ASCII tail to reach n exactly), different for each seed.
func utf8Payload(n, seed int) []byte {
	runes := []string{"a", "Z", "0", " ", "é", "ß", "€", "☃", "日本", "🚀", "\n", "\"", "\\", "{}"}
	var b bytes.Buffer
	for i := 0; b.Len() < n-4; i++ {
		b.WriteString(runes[(i*7+seed)%len(runes)])
	}
	for b.Len() < n {
		b.WriteByte('x')
	}
	return b.Bytes()
}

func TestMultiNode(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	nodes := startNodes(t, p, 3, r.URL, nil)

	// They start in this order and run in parallel, against the same three
	// nodes.
	for _, test := range []struct {
		name string
		run  func(*testing.T, *Redis, *Puma, []*Cablecar)
	}{
		{"RawPublish", multiNodeRawPublish},
		{"Channels", multiNodeChannels},
		{"AdminPublish", multiNodeAdminPublish},
		{"AdminSend", multiNodeAdminSend},
		{"AdminClose", multiNodeAdminClose},
		{"ReplyPublish", multiNodeReplyPublish},
		{"NoMissAfterReady", multiNodeNoMiss},
	} {
		t.Run(test.name, func(t *testing.T) {
			t.Parallel()
			test.run(t, r, p, nodes)
		})
	}
}

// A PUBLISH from any Redis client reaches every subscriber on every node,
// byte for byte, as one text message each.
func multiNodeRawPublish(t *testing.T, r *Redis, p *Puma, nodes []*Cablecar) {
	ch := channel("raw")
	a, _ := joinWS(t, nodes[0], p, "/ws/mn/raw", ch)
	a2, _ := joinWS(t, nodes[0], p, "/ws/mn/raw", ch)
	b, _ := joinWS(t, nodes[1], p, "/ws/mn/raw", ch)
	d, _ := joinWS(t, nodes[2], p, "/ws/mn/raw", ch)
	clients := []*WSClient{a, a2, b, d}

	payloads := [][]byte{
		[]byte("hello"),
		[]byte("héllo wörld, ✓ 日本語 🚀"),
		[]byte("{\"json\": [1, 2]}\r\n\ttrailing space "),
		utf8Payload(64<<10, 1),
	}
	for _, payload := range payloads {
		// One Redis subscription per node, however many clients it has.
		if n := publishRaw(t, r, defaultPrefix, ch, payload); n != 3 {
			t.Errorf("PUBLISH %.40q: %d Redis subscribers got it, want 3 (one per node)", payload, n)
		}
	}
	for i, ws := range clients {
		for _, payload := range payloads {
			kind, data, err := ws.Read(brokerWait)
			if err != nil {
				t.Fatalf("client %d: waiting for %d bytes %.40q: %v", i, len(payload), payload, err)
			}
			if kind != TextMessage || !bytes.Equal(data, payload) {
				t.Fatalf("client %d: got %s of %d bytes %.60q, want text of %d bytes %.60q",
					i, kindName(kind), len(data), data, len(payload), payload)
			}
		}
	}

	// A channel nobody listens to reaches no node.
	if n := publishRaw(t, r, defaultPrefix, channel("nobody"), []byte("x")); n != 0 {
		t.Errorf("PUBLISH to a channel without subscribers: %d Redis subscribers, want 0", n)
	}
	// Without the prefix it is some other application's channel.
	if n := publishRaw(t, r, "", ch, []byte("unprefixed")); n != 0 {
		t.Errorf("PUBLISH %s without the prefix: %d Redis subscribers, want 0", ch, n)
	}
	a.Send("echo:after")
	a.ExpectText(wsWait, "after") // not "unprefixed"
}

// Each node is subscribed in Redis to a channel exactly while one of its
// own clients is: from before the client is told it is connected until the
// last one on that node leaves, by any route.
func multiNodeChannels(t *testing.T, r *Redis, p *Puma, nodes []*Cablecar) {
	ch := channel("chans")
	listed := func() bool {
		chans, err := appChannels(r, defaultPrefix)
		if err != nil {
			t.Fatalf("PUBSUB CHANNELS: %v", err)
		}
		return slices.Contains(chans, ch)
	}
	if n := numSub(t, r, defaultPrefix, ch); n != 0 || listed() {
		t.Fatalf("before any client: NUMSUB %d, listed %v", n, listed())
	}

	// No waiting here: the subscription is in place before the client
	// reads its first message.
	a, ida := joinWS(t, nodes[0], p, "/ws/mn/chans", ch)
	if n := numSub(t, r, defaultPrefix, ch); n != 1 || !listed() {
		t.Fatalf("one client on node 0: NUMSUB %d, listed %v; want 1, listed", n, listed())
	}
	b, idb := joinWS(t, nodes[1], p, "/ws/mn/chans", ch)
	if n := numSub(t, r, defaultPrefix, ch); n != 2 {
		t.Fatalf("clients on nodes 0 and 1: NUMSUB %d, want 2", n)
	}
	a2, ida2 := joinWS(t, nodes[0], p, "/ws/mn/chans", ch)
	if n := numSub(t, r, defaultPrefix, ch); n != 2 {
		t.Fatalf("a second client on node 0: NUMSUB %d, want still 2", n)
	}

	// The first of two on node 0 leaves: node 0 stays subscribed.
	a.CloseWith(wsWait, 1000, "")
	WaitCloseEvent(t, p, ida, wsWait)
	if n := publishRaw(t, r, defaultPrefix, ch, []byte("still")); n != 2 {
		t.Errorf("after one of two clients on node 0 left: %d Redis subscribers, want 2", n)
	}
	a2.ExpectText(brokerWait, "still")
	b.ExpectText(brokerWait, "still")

	// The last on node 0 leaves: node 0 unsubscribes, node 1 stays.
	a2.CloseWith(wsWait, 1000, "")
	WaitCloseEvent(t, p, ida2, wsWait)
	waitNumSub(t, r, defaultPrefix, ch, 1, "after the last client on node 0 left")
	if n := publishRaw(t, r, defaultPrefix, ch, []byte("only b")); n != 1 {
		t.Errorf("only b left: %d Redis subscribers, want 1", n)
	}
	b.ExpectText(brokerWait, "only b")

	// Leaving by a reply's unsubscribe counts too, and so does joining by
	// a reply's subscribe.
	b.Send("unsub:" + ch)
	WaitFor(t, brokerWait, ch+" to leave PUBSUB CHANNELS after unsub", func() bool { return !listed() })
	b.Send("sub:" + ch)
	waitNumSub(t, r, defaultPrefix, ch, 1, "after sub by reply")
	publishRaw(t, r, defaultPrefix, ch, []byte("back"))
	b.ExpectText(brokerWait, "back")

	// A client that vanishes without a close handshake is cleaned up as
	// well, and with it the node's subscription.
	b.Conn.Close()
	WaitCloseEvent(t, p, idb, 20*time.Second)
	WaitFor(t, brokerWait, ch+" to leave PUBSUB CHANNELS after the last client vanished", func() bool { return !listed() })

	// A channel joined only by reply on node 2, left by the client closing.
	ch2 := channel("chans")
	d, idd := joinWS(t, nodes[2], p, "/ws/mn/chans")
	d.Send("sub:" + ch2)
	waitNumSub(t, r, defaultPrefix, ch2, 1, "after sub by reply on node 2")
	d.CloseWith(wsWait, 1000, "")
	WaitCloseEvent(t, p, idd, wsWait)
	waitNumSub(t, r, defaultPrefix, ch2, 0, "after the only client on node 2 left")
}

// /publish on any node reaches subscribers on every node: one message, an
// array, except a connection on a third node, binary.
func multiNodeAdminPublish(t *testing.T, r *Redis, p *Puma, nodes []*Cablecar) {
	ch := channel("admpub")
	a, _ := joinWS(t, nodes[0], p, "/ws/mn/admpub", ch)
	b, idb := joinWS(t, nodes[1], p, "/ws/mn/admpub", ch)
	d, _ := joinWS(t, nodes[2], p, "/ws/mn/admpub", ch)
	all := []*WSClient{a, b, d}

	MustAdminPost(t, nodes[0], "/publish", map[string]any{"channel": ch, "data": "one ✓"}, "")
	for _, ws := range all {
		ws.ExpectText(brokerWait, "one ✓")
	}

	MustAdminPost(t, nodes[1], "/publish", []map[string]any{
		{"channel": ch, "data": "two"},
		{"channel": channel("nobody"), "data": "to no one"},
		{"channel": ch, "data": "three"},
	}, "")
	for _, ws := range all {
		ws.ExpectText(brokerWait, "two")
		ws.ExpectText(brokerWait, "three")
	}

	// Except b (on node 1), published from node 2.
	MustAdminPost(t, nodes[2], "/publish", map[string]any{"channel": ch, "data": "not to b", "except": idb}, "")
	a.ExpectText(brokerWait, "not to b")
	d.ExpectText(brokerWait, "not to b")

	MustAdminPost(t, nodes[0], "/publish", map[string]any{"channel": ch, "data": "AAEC/w==", "binary": true}, "")
	for _, ws := range all {
		ws.ExpectBinary(brokerWait, []byte{0, 1, 2, 0xff}) // for b: not "not to b"
	}
	// Every byte value, as binary, across nodes.
	every := make([]byte, 1024)
	for i := range every {
		every[i] = byte(i)
	}
	MustAdminPost(t, nodes[1], "/publish", map[string]any{"channel": ch, "data": base64.StdEncoding.EncodeToString(every), "binary": true}, "")
	for _, ws := range all {
		ws.ExpectBinary(brokerWait, every)
	}
}

// /send reaches a connection on whichever node holds it.
func multiNodeAdminSend(t *testing.T, r *Redis, p *Puma, nodes []*Cablecar) {
	a, ida := joinWS(t, nodes[0], p, "/ws/mn/send")
	b, idb := joinWS(t, nodes[1], p, "/ws/mn/send")
	d, idd := joinWS(t, nodes[2], p, "/ws/mn/send")

	MustAdminPost(t, nodes[0], "/send", map[string]any{"connection": idb, "data": "0 to b"}, "")
	b.ExpectText(brokerWait, "0 to b")
	MustAdminPost(t, nodes[2], "/send", map[string]any{"connection": ida, "data": "2 to a ✓"}, "")
	a.ExpectText(brokerWait, "2 to a ✓")
	MustAdminPost(t, nodes[1], "/send", map[string]any{"connection": idd, "data": "1 to d"}, "")
	d.ExpectText(brokerWait, "1 to d")

	// From every node, the node holding it included.
	for i, c := range nodes {
		MustAdminPost(t, c, "/send", map[string]any{"connection": idb, "data": fmt.Sprintf("from %d", i)}, "")
	}
	expectTexts(t, b, brokerWait, "from 0", "from 1", "from 2")

	// Several from one node keep their order.
	for i := range 20 {
		MustAdminPost(t, nodes[0], "/send", map[string]any{"connection": idd, "data": fmt.Sprintf("seq %02d", i)}, "")
	}
	for i := range 20 {
		d.ExpectText(brokerWait, fmt.Sprintf("seq %02d", i))
	}

	// Not in the contract for Redis; shown for whoever reads the run.
	code, body := AdminPost(t, nodes[0], "/send", map[string]any{"connection": "no-such-connection", "data": "x"}, "")
	t.Logf("/send to an unknown connection with Redis: %d %q", code, body)
}

// /close reaches a connection on another node; the app hears of it as
// closed by the app.
func multiNodeAdminClose(t *testing.T, r *Redis, p *Puma, nodes []*Cablecar) {
	ws, id := joinWS(t, nodes[1], p, "/ws/mn/close")
	MustAdminPost(t, nodes[0], "/close", map[string]any{"connection": id, "code": 4001, "reason": "far away ✓"}, "")
	if code, reason := ws.ExpectClose(brokerWait); code != 4001 || reason != "far away ✓" {
		t.Errorf("closed with %d %q, want 4001 \"far away ✓\"", code, reason)
	}
	if ev := WaitCloseEvent(t, p, id, wsWait); ev.By != "app" {
		t.Errorf("close event %v, want by app", ev)
	}
	l := AppLog(t, p, id)
	if n := len(closeBatches(l)); n != 1 {
		t.Errorf("%d POSTs with a close event, want 1: %v", n, l.Events())
	}
}

// A reply's publish reaches the channel's subscribers on every node;
// except_self leaves out only the connection that sent the event.
func multiNodeReplyPublish(t *testing.T, r *Redis, p *Puma, nodes []*Cablecar) {
	ch := channel("reply")
	a, _ := joinWS(t, nodes[0], p, "/ws/mn/reply", ch)
	a2, _ := joinWS(t, nodes[0], p, "/ws/mn/reply", ch)
	b, _ := joinWS(t, nodes[1], p, "/ws/mn/reply", ch)
	d, _ := joinWS(t, nodes[2], p, "/ws/mn/reply", ch)

	a.Send("pub:" + ch + ":hello from a")
	for _, ws := range []*WSClient{a2, b, d} {
		ws.ExpectText(brokerWait, "hello from a")
	}
	// Node 0 has delivered to a2 by now, so a's copy would be queued before
	// this echo's reply.
	a.Send("echo:mark a")
	a.ExpectText(wsWait, "mark a")

	b.Send("pub:" + ch + ":hello from b")
	for _, ws := range []*WSClient{a, a2, d} {
		ws.ExpectText(brokerWait, "hello from b")
	}
	b.Send("echo:mark b")
	b.ExpectText(wsWait, "mark b")

	d.Send("puball:" + ch + ":to all")
	for _, ws := range []*WSClient{a, a2, b, d} {
		ws.ExpectText(brokerWait, "to all")
	}
}

// A message published the moment a client has read its first message is
// delivered to it, whichever node it is on and whichever way the message
// comes: the node's subscription is confirmed before the client is told.
func multiNodeNoMiss(t *testing.T, r *Redis, p *Puma, nodes []*Cablecar) {
	for i := range 20 {
		node := nodes[i%len(nodes)]
		ch := channel("nomiss")
		ws, _ := joinWS(t, node, p, "/ws/mn/nomiss", ch)
		want := fmt.Sprintf("right after %d", i)
		if i%2 == 0 {
			if n := publishRaw(t, r, defaultPrefix, ch, []byte(want)); n != 1 {
				t.Errorf("round %d: PUBLISH right after the first message: %d Redis subscribers, want 1", i, n)
			}
		} else {
			other := nodes[(i+1)%len(nodes)]
			MustAdminPost(t, other, "/publish", map[string]any{"channel": ch, "data": want}, "")
		}
		ws.ExpectText(brokerWait, want)
		ws.Conn.Close()
	}
}
