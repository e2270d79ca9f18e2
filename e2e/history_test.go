package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// History and resume on raw connections (SPEC §10): positions from
// /publish, the JSON envelope, Cablecar-Subscribe with since= on the same
// node and on another, a history that no longer reaches back, a Redis
// flush changing the epoch, and publishes racing a replay.
//
//	go test -race -count=1 -run 'TestHistory' ./e2e/

// historySize is the history.size these tests run with.
const historySize = 64

// envelopeMsg is a broadcast in the JSON envelope.
type envelopeMsg struct {
	Channel string  `json:"channel"`
	Epoch   string  `json:"epoch"`
	Offset  *uint64 `json:"offset"`
	Data    string  `json:"data"`
	Binary  bool    `json:"binary"`
}

func (m envelopeMsg) pos() string {
	if m.Offset == nil {
		return ""
	}
	return m.Epoch + ":" + strconv.FormatUint(*m.Offset, 10)
}

// readEnvelope reads one broadcast in the envelope.
func readEnvelope(t *testing.T, ws *WSClient, timeout time.Duration) envelopeMsg {
	t.Helper()
	kind, data, err := ws.Read(timeout)
	if err != nil {
		t.Fatalf("reading a broadcast: %v", err)
	}
	var m envelopeMsg
	if kind != TextMessage || json.Unmarshal(data, &m) != nil {
		t.Fatalf("got %s %.200q, want a broadcast in the JSON envelope", kindName(kind), data)
	}
	return m
}

// publishAt publishes texts to ch through c's admin API, in one request,
// and returns their positions.
func publishAt(t *testing.T, c *Cablecar, ch string, texts ...string) []string {
	t.Helper()
	items := make([]map[string]any, len(texts))
	for i, s := range texts {
		items[i] = map[string]any{"channel": ch, "data": s}
	}
	body := MustAdminPost(t, c, "/publish", items, "")
	var got struct {
		Published int       `json:"published"`
		Positions []*string `json:"positions"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil || got.Published != len(texts) || len(got.Positions) != len(texts) {
		t.Fatalf("/publish answered %s, want %d published and as many positions", body, len(texts))
	}
	out := make([]string, len(texts))
	for i, p := range got.Positions {
		if p == nil {
			t.Fatalf("/publish answered %s: a null position on a channel with history", body)
		}
		out[i] = *p
	}
	return out
}

// resumeWS connects to c subscribed to ch, in the envelope, resuming after
// since when it is not empty, and returns once the accept's first message
// came.
func resumeWS(t *testing.T, c *Cablecar, p *Puma, path, ch, since string) (*WSClient, string) {
	t.Helper()
	sub := ch
	if since != "" {
		sub += "; since=" + since
	}
	tgt := WithQuery(WithQuery(WithQuery(path, "subscribe", sub), "envelope", "json"), "first", "ready")
	ws, id := ConnectWS(t, c, p, tgt, nil)
	ws.ExpectText(wsWait, "ready")
	return ws, id
}

// expectEnvelopes reads len(want) broadcasts and fails unless they carry
// want's texts in order, at consecutive offsets.
func expectEnvelopes(t *testing.T, ws *WSClient, ch string, want ...string) []envelopeMsg {
	t.Helper()
	var got []envelopeMsg
	for i, w := range want {
		m := readEnvelope(t, ws, wsWait)
		if m.Channel != ch || m.Data != w || m.Offset == nil {
			t.Fatalf("broadcast %d: %+v, want %q on %q with a position", i, m, w, ch)
		}
		if i > 0 && (m.Epoch != got[0].Epoch || *m.Offset != *got[i-1].Offset+1) {
			t.Fatalf("broadcast %d at %s after %s: want the next offset", i, m.pos(), got[i-1].pos())
		}
		got = append(got, m)
	}
	return got
}

// openRecovered waits for the open event of id and returns its
// "recovered", read from the raw body the app received.
func openRecovered(t *testing.T, p *Puma, id string) map[string]bool {
	t.Helper()
	var rec map[string]bool
	WaitEventsFor(t, p, id, wsWait, "the open event", func(l WSAppLog) bool {
		for _, b := range l.Batches {
			var body struct {
				Events []struct {
					Type      string          `json:"type"`
					Recovered map[string]bool `json:"recovered"`
				} `json:"events"`
			}
			if json.Unmarshal([]byte(b.Raw), &body) != nil {
				continue
			}
			for _, e := range body.Events {
				if e.Type == "open" {
					rec = e.Recovered
					return true
				}
			}
		}
		return false
	})
	return rec
}

func TestHistory(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	p := StartPuma(t, PumaOptions{})
	nodes := startNodes(t, p, 2, r.URL, map[string]any{"history.size": historySize})
	for _, test := range []struct {
		name string
		run  func(*testing.T, *Redis, *Puma, []*Cablecar)
	}{
		{"Resume", historyResume},
		{"TooFarBack", historyTooFarBack},
		{"Flush", historyFlush},
		{"RacingPublishes", historyRacing},
	} {
		t.Run(test.name, func(t *testing.T) { test.run(t, r, p, nodes) })
	}
}

// historyResume: a client that left resumes on its own node and on the
// other, getting what it missed, then live messages, each once.
func historyResume(t *testing.T, _ *Redis, p *Puma, nodes []*Cablecar) {
	for i, c := range nodes {
		t.Run(fmt.Sprintf("node%d", i), func(t *testing.T) {
			ch := "hist:resume:" + NewTag(t)
			ws, _ := resumeWS(t, nodes[0], p, "/ws/hist-resume", ch, "")
			pos := publishAt(t, nodes[1], ch, "one", "two")
			got := expectEnvelopes(t, ws, ch, "one", "two")
			for i := range got {
				if got[i].pos() != pos[i] {
					t.Errorf("broadcast %d at %s, but /publish said %s", i, got[i].pos(), pos[i])
				}
			}
			ws.CloseWith(wsWait, 1000, "bye")
			missed := publishAt(t, nodes[1], ch, "three", "four")

			ws, id := resumeWS(t, c, p, "/ws/hist-resume", ch, pos[1])
			replayed := expectEnvelopes(t, ws, ch, "three", "four")
			if replayed[0].pos() != missed[0] {
				t.Errorf("replay starts at %s, want %s", replayed[0].pos(), missed[0])
			}
			if rec := openRecovered(t, p, id); !rec[ch] || len(rec) != 1 {
				t.Errorf("open event's recovered: %v, want {%q: true}", rec, ch)
			}
			publishAt(t, nodes[1-i], ch, "live")
			m := readEnvelope(t, ws, wsWait)
			if m.Data != "live" || *m.Offset != *replayed[1].Offset+1 {
				t.Errorf("after the replay got %+v, want \"live\" at the next offset", m)
			}
			ws.CloseWith(wsWait, 1000, "bye")
		})
	}
}

// historyTooFarBack: a position the history no longer reaches, or of an
// epoch it never had, is not recovered: nothing is replayed, live
// messages come, and the open event says false.
func historyTooFarBack(t *testing.T, _ *Redis, p *Puma, nodes []*Cablecar) {
	ch := "hist:far:" + NewTag(t)
	first := publishAt(t, nodes[0], ch, "old")[0]
	more := make([]string, historySize+2)
	for i := range more {
		more[i] = "m" + strconv.Itoa(i)
	}
	publishAt(t, nodes[0], ch, more...)
	epoch, _, _ := strings.Cut(first, ":")
	for _, since := range []string{first, "noSuchEpoch:1", epoch + ":999999"} {
		ws, id := resumeWS(t, nodes[1], p, "/ws/hist-far", ch, since)
		if rec := openRecovered(t, p, id); rec[ch] || len(rec) != 1 {
			t.Errorf("since %s: open event's recovered %v, want {%q: false}", since, rec, ch)
		}
		publishAt(t, nodes[0], ch, "live")
		if m := readEnvelope(t, ws, wsWait); m.Data != "live" {
			t.Errorf("since %s: the first broadcast is %+v; want the live one, nothing replayed", since, m)
		}
		ws.CloseWith(wsWait, 1000, "bye")
	}
}

// historyFlush: a Redis flush loses the history; the next message starts a
// new epoch, and a position of the old one is not recovered.
func historyFlush(t *testing.T, r *Redis, p *Puma, nodes []*Cablecar) {
	ch := "hist:flush:" + NewTag(t)
	before := publishAt(t, nodes[0], ch, "a", "b")
	if _, err := r.Do("FLUSHALL"); err != nil {
		t.Fatal(err)
	}
	after := publishAt(t, nodes[1], ch, "c")[0]
	oldEpoch, _, _ := strings.Cut(before[0], ":")
	newEpoch, off, _ := strings.Cut(after, ":")
	if newEpoch == oldEpoch || off != "1" {
		t.Fatalf("after FLUSHALL /publish answered %s, before it %v: want a new epoch from offset 1", after, before)
	}
	ws, id := resumeWS(t, nodes[1], p, "/ws/hist-flush", ch, before[0])
	if rec := openRecovered(t, p, id); rec[ch] {
		t.Errorf("a position of the flushed epoch was recovered: %v", rec)
	}
	ws.CloseWith(wsWait, 1000, "bye")
}

// historyRacing: while messages keep being published, from both nodes'
// admin APIs, a client resumes again and again; every time it gets each
// message after its position once, in order, without a gap, the replayed
// and the live ones alike.
func historyRacing(t *testing.T, _ *Redis, p *Puma, nodes []*Cablecar) {
	const runs = 30
	ch := "hist:race:" + NewTag(t)
	start := publishAt(t, nodes[0], ch, "0")[0]
	epoch, _, _ := strings.Cut(start, ":")
	var stop atomic.Bool
	var sent atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; !stop.Load(); i++ {
			// A batch now and then, so replays meet several at once.
			n := 1 + i%3
			texts := make([]string, n)
			for k := range texts {
				texts[k] = "x"
			}
			if st, body := AdminPost(t, nodes[i%2], "/publish", publishItems(ch, texts), ""); st != 200 {
				t.Errorf("/publish: %d %s", st, body)
				return
			}
			sent.Add(int64(n))
		}
	})
	defer func() { stop.Store(true); wg.Wait() }()

	from := uint64(1)
	for run := range runs {
		since := epoch + ":" + strconv.FormatUint(from, 10)
		ws, id := resumeWS(t, nodes[run%2], p, "/ws/hist-race", ch, since)
		if rec := openRecovered(t, p, id); !rec[ch] {
			t.Fatalf("run %d, resumed after %s: not recovered (%v); the publisher outran history.size?", run, since, rec)
		}
		// Read until past what was published when the client connected,
		// plus a few live ones.
		target := from + uint64(historySize/2)
		next := from + 1
		for next <= target {
			m := readEnvelope(t, ws, wsWait)
			if m.Offset == nil || m.Epoch != epoch || *m.Offset != next {
				t.Fatalf("run %d, resumed after %s: got %s where %s:%d was due (a gap, a duplicate or out of order)",
					run, since, m.pos(), epoch, next)
			}
			next++
		}
		ws.CloseWith(wsWait, 1000, "bye")
		// Resume next from a little behind the newest known, within the
		// history's reach.
		from = next - 2
	}
}

func publishItems(ch string, texts []string) []map[string]any {
	items := make([]map[string]any, len(texts))
	for i, s := range texts {
		items[i] = map[string]any{"channel": ch, "data": s}
	}
	return items
}

// TestHistoryOneNode runs the same on one node with the in-memory broker
// (both "nodes" are the one).
func TestHistoryOneNode(t *testing.T) {
	t.Parallel()
	p := StartPuma(t, PumaOptions{})
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{
		"history.size": historySize, "websocket.pong_timeout": "60s",
	}})
	nodes := []*Cablecar{c, c}
	for _, test := range []struct {
		name string
		run  func(*testing.T, *Redis, *Puma, []*Cablecar)
	}{
		{"Resume", historyResume},
		{"TooFarBack", historyTooFarBack},
		{"RacingPublishes", historyRacing},
	} {
		t.Run(test.name, func(t *testing.T) { test.run(t, nil, p, nodes) })
	}
}
