package upgrade

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/prometheus/client_golang/prometheus"
)

// recordConn keeps every write, each on its own.
type recordConn struct {
	discardConn
	mu     sync.Mutex
	writes [][]byte
}

func (r *recordConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

// ready gives c its socket, as the read loop does after the 101, and
// starts the writer for what waits.
func (c *Conn) ready(t testing.TB, raw net.Conn) {
	t.Helper()
	ws := serverWS(t, raw)
	c.mu.Lock()
	c.raw = raw
	c.ws.Store(ws)
	c.kickLocked()
	c.mu.Unlock()
}

// Messages that wait for the writer go out in one write, framed as RFC
// 6455 says, a broadcast's shared frame among them, the control frames
// first; and they leave the queue's byte count.
func TestWriterGathersQueuedFrames(t *testing.T) {
	h := bareHub(t, newRecBroker(t), Config{SendQueue: 100})
	c := h.bareConn("c1")
	big := bytes.Repeat([]byte("b"), 300)
	c.enqueue(outgoing{data: []byte("one"), size: 3})
	c.enqueue(outgoing{frame: newFrame(false, big), size: len(big)})
	c.enqueue(outgoing{data: []byte{1, 2}, binary: true, size: 2})
	c.queuePing()
	rec := &recordConn{}
	c.ready(t, rec)
	c.writers.Wait()

	want := []byte{0x89, 0}                     // ping
	want = append(want, 0x81, 3, 'o', 'n', 'e') // text "one"
	want = append(want, 0x81, 126, 1, 44)       // text, 300 bytes
	want = append(want, big...)
	want = append(want, 0x82, 2, 1, 2) // binary
	if len(rec.writes) != 1 {
		t.Fatalf("%d writes, want 1", len(rec.writes))
	}
	if !bytes.Equal(rec.writes[0], want) {
		t.Fatalf("wrote % x\nwant      % x", rec.writes[0], want)
	}
	if q := c.queued.Load(); q != 0 {
		t.Errorf("%d bytes still counted as queued", q)
	}
}

// A message too large for the writer's buffer goes in a write of its own,
// whole, after what was gathered before it.
func TestWriterLargeMessage(t *testing.T) {
	h := bareHub(t, newRecBroker(t), Config{SendQueue: 100, SendQueueBytes: 1 << 30})
	c := h.bareConn("c1")
	big := bytes.Repeat([]byte("x"), 3*writeBufSize)
	c.enqueue(outgoing{data: []byte("a"), size: 1})
	c.enqueue(outgoing{data: big, size: len(big)})
	c.enqueue(outgoing{data: []byte("z"), size: 1})
	rec := &recordConn{}
	c.ready(t, rec)
	c.writers.Wait()
	var all []byte
	for _, w := range rec.writes {
		all = append(all, w...)
	}
	got := readFrames(t, bytes.NewReader(all), 3)
	if len(got) != 3 || string(got[0]) != "a" || !bytes.Equal(got[1], big) || string(got[2]) != "z" {
		t.Fatalf("frames out of order or damaged: %d frames", len(got))
	}
}

// Broadcasts written by the fan-out itself and those left to the writer
// when the socket fills (a write the socket took only part of included)
// reach a client that stops reading whole and in order.
func TestDeliverWhenSocketFills(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	server.(*net.TCPConn).SetWriteBuffer(4096)

	cfg := Config{SendQueue: 10000, SendQueueBytes: 1 << 30}
	cfg.setDefaults()
	h := newHub(cfg, zeroLogger(), newRecBroker(t), newMetrics(prometheus.NewRegistry()))
	defer h.cancel()
	c := h.bareConn("c1")
	c.ready(t, server)

	const n = 2000
	payload := func(i int) []byte { return []byte(strconv.Itoa(i) + ":" + string(bytes.Repeat([]byte("p"), 1000))) }
	inline, queued := 0, 0
	for i := range n {
		p := payload(i)
		if c.deliver(outgoing{frame: newFrame(false, p), size: len(p)}) {
			inline++
		} else {
			queued++
		}
	}
	if inline == 0 || queued == 0 {
		t.Fatalf("%d written by the fan-out, %d left to the writer: the test wants both", inline, queued)
	}
	client.SetReadDeadline(time.Now().Add(30 * time.Second))
	got := readFrames(t, client, n)
	for i, p := range got {
		if !bytes.Equal(p, payload(i)) {
			t.Fatalf("frame %d is %.20q…, want %.20q…", i, p, payload(i))
		}
	}
	c.writers.Wait()
	if q := c.queued.Load(); q != 0 {
		t.Errorf("%d bytes still counted as queued", q)
	}
}

// The answer to a client's close frame goes after the frame the writer is
// in the middle of, and nothing follows it.
func TestCloseReplyAfterPendingFrames(t *testing.T) {
	h := bareHub(t, newRecBroker(t), Config{SendQueue: 100})
	c := h.bareConn("c1")
	rec := &recordConn{}
	c.enqueue(outgoing{data: []byte("before"), size: 6})
	c.ready(t, rec)
	c.decide(closing{code: websocket.CloseNormalClosure, by: ByClient})
	c.replyClose(websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
	c.enqueue(outgoing{data: []byte("after"), size: 5})
	c.queuePing()
	c.writers.Wait()
	var all []byte
	for _, w := range rec.writes {
		all = append(all, w...)
	}
	last := []byte{0x88, 2, 0x03, 0xe8}
	if !bytes.HasSuffix(all, last) {
		t.Fatalf("wrote % x, want it to end with the close frame % x", all, last)
	}
	if bytes.Contains(all, []byte("after")) {
		t.Fatalf("a message was written after the close frame: % x", all)
	}
}

// readFrames reads n unmasked, unfragmented frames and returns their
// payloads.
func readFrames(t *testing.T, r io.Reader, n int) [][]byte {
	t.Helper()
	out := make([][]byte, 0, n)
	for range n {
		var h [2]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			t.Fatalf("after %d frames: %v", len(out), err)
		}
		if h[0]&0x80 == 0 || h[1]&0x80 != 0 {
			t.Fatalf("frame %d: header % x is not a final unmasked frame", len(out), h)
		}
		size := uint64(h[1])
		switch size {
		case 126:
			var b [2]byte
			io.ReadFull(r, b[:])
			size = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			io.ReadFull(r, b[:])
			size = binary.BigEndian.Uint64(b[:])
		}
		p := make([]byte, size)
		if _, err := io.ReadFull(r, p); err != nil {
			t.Fatalf("frame %d: %v", len(out), err)
		}
		out = append(out, p)
	}
	return out
}
