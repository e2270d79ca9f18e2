package upgrade

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/cablecar/cablecar/actioncable"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/internal/testsupport"
	"github.com/cablecar/cablecar/presence"
	"github.com/cablecar/cablecar/pubsub"
)

// presenceHub is an ActionCable hub over the in-memory broker with
// presence on (no leave_delay).
func presenceHub(t *testing.T) *Hub {
	t.Helper()
	b := pubsub.NewMemory()
	h := acHub(t, b)
	if err := b.Start(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	tr := presence.NewTracker(presence.Config{Counts: h.Members, Notify: h.presenceNotify}, presence.NewMemory(), zeroLogger())
	go tr.Run()
	t.Cleanup(func() { tr.Close(); tr.Wait() })
	h.EnablePresence(tr)
	return h
}

func (h *Hub) extConn(id string) *Conn {
	c := h.bareConn(id)
	c.ac = newACConn(actioncable.Ext)
	h.add(c)
	return c
}

// waitFrame waits until c was sent want, and returns what came before it.
func waitFrame(t *testing.T, c *Conn, want string) {
	t.Helper()
	var seen []string
	testsupport.Eventually(t, "frame "+want, 5*time.Second, func() bool {
		seen = append(seen, frames(c.takeQueue())...)
		return slices.Contains(seen, want)
	})
}

// Ext subscribers hear AnyCable's presence frames (the joiner too; a leave
// carries no info), the presence command is answered from the store, a
// reply's join by identifier takes the subscription's first stream, and an
// unsubscribe leaves at once.
func TestACExtPresence(t *testing.T) {
	h := presenceHub(t)
	const id = `{"channel":"ChatChannel"}`
	a, w := h.extConn("a"), h.extConn("w")
	for _, c := range []*Conn{a, w} {
		c.cmd(t, actioncable.Subscribe, id)
		c.Apply(streamReply(callback.StreamRef{Identifier: id, Stream: "chat:1"}, callback.StreamRef{Identifier: id, Stream: "chat:2"}))
	}
	a.Apply(&callback.Reply{Presence: &callback.PresenceReply{Join: []callback.PresenceJoin{
		{Identifier: id, ID: "u1", Info: json.RawMessage(`{"name":"Ann"}`)}}}})
	join := `{"type":"presence","identifier":"{\"channel\":\"ChatChannel\"}","message":{"type":"join","id":"u1","info":{"name":"Ann"}}}`
	waitFrame(t, a, join)
	waitFrame(t, w, join)

	// What a restored session re-joined: the client's re-sent join for the
	// id it holds is a no-op (SPEC §10/§11); another id is a proposal.
	if !a.acHoldsPresence(id, &actioncable.PresenceInfo{ID: "u1"}) || a.acHoldsPresence(id, &actioncable.PresenceInfo{ID: "u2"}) ||
		w.acHoldsPresence(id, &actioncable.PresenceInfo{ID: "u1"}) {
		t.Fatal("acHoldsPresence: want true only for a's u1")
	}

	w.acCommand([]byte(`{"command":"presence","identifier":"{\"channel\":\"ChatChannel\"}","data":"{}"}`), false)
	waitFrame(t, w, `{"type":"presence","identifier":"{\"channel\":\"ChatChannel\"}","message":{"type":"info","total":1,"records":[{"id":"u1","info":{"name":"Ann"}}]}}`)

	// A presence command for a subscription that streams nothing cannot be
	// answered.
	const idle = `{"channel":"Idle"}`
	w.cmd(t, actioncable.Subscribe, idle)
	w.acCommand([]byte(`{"command":"presence","identifier":"{\"channel\":\"Idle\"}"}`), false)
	waitFrame(t, w, `{"type":"presence","identifier":"{\"channel\":\"Idle\"}","message":{"type":"error"}}`)

	a.cmd(t, actioncable.Unsubscribe, id)
	waitFrame(t, w, `{"type":"presence","identifier":"{\"channel\":\"ChatChannel\"}","message":{"type":"leave","id":"u1"}}`)
}

// A raw connection hears presence only when its accept asked.
func TestRawPresenceEvents(t *testing.T) {
	h := presenceHub(t)
	on, off := h.bareConn("on"), h.bareConn("off")
	on.events = eventPresence
	for _, c := range []*Conn{on, off} {
		h.add(c)
		if err := c.subscribe("room"); err != nil {
			t.Fatal(err)
		}
	}
	off.presenceApply(&callback.PresenceReply{Join: []callback.PresenceJoin{{Channel: "room", ID: "u9", Info: json.RawMessage(`null`)}}})
	waitFrame(t, on, `{"presence":"join","channel":"room","id":"u9","info":null}`)
	if q := frames(off.takeQueue()); len(q) != 0 {
		t.Fatalf("a connection that did not ask heard %q", q)
	}
	s, err := h.pres.t.Read(context.Background(), "room")
	if err != nil || s.Connections != 2 || len(s.Members) != 1 {
		t.Fatalf("presence of room: %+v, %v", s, err)
	}
}
