package upgrade

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cablecar/cablecar/pubsub"
)

// The per-delivery path, without a client: a broadcast goes through
// Deliver, every member's queue and its writer, down to a socket. Each
// benchmark reports ns, bytes and allocations per delivery (one message
// reaching one connection), the figures issue 13 sets targets for.
//
//	go test -run - -bench DeliverWrite -benchtime 20x ./upgrade/
//
// "discard" sockets take every write at once and cost nothing, so they show
// Cablecar's own cost (queueing, the writer, framing); "socketpair" sockets
// are real Unix stream sockets drained by a reader goroutine each, so they
// add the write system calls and the deadlines, and the readers' CPU.
// "burst" publishes 10 broadcasts before waiting, so that a writer finds
// several messages queued, as it does under a high publish rate.
func BenchmarkDeliverWrite(b *testing.B) {
	for _, bc := range []struct {
		name  string
		conns int
		burst int
		pair  bool
	}{
		{"discard/10k", 10000, 1, false},
		{"discard/10k/burst10", 10000, 10, false},
		{"socketpair/1k", 1000, 1, true},
		{"socketpair/1k/burst10", 1000, 10, true},
	} {
		b.Run(bc.name, func(b *testing.B) { benchDeliverWrite(b, bc.conns, bc.burst, bc.pair) })
	}
}

func benchDeliverWrite(b *testing.B, n, burst int, pair bool) {
	cfg := Config{SendQueue: 1 << 20, SendQueueBytes: 1 << 40}
	cfg.setDefaults()
	h := newHub(cfg, zeroLogger(), newRecBroker(b), newMetrics(prometheus.NewRegistry()))
	defer h.cancel()
	var sink byteSink
	conns := make([]*Conn, n)
	var readers sync.WaitGroup
	for i := range conns {
		var server net.Conn
		if pair {
			var client net.Conn
			server, client = socketPair(b)
			readers.Go(func() { sink.drain(client) })
		} else {
			server = &discardConn{sink: &sink}
		}
		c := h.bareConn(fmt.Sprint("c", i))
		c.raw = server
		c.ws.Store(serverWS(b, server))
		if err := c.subscribe("room"); err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}
	defer func() {
		for _, c := range conns {
			c.writers.Wait()
			c.raw.Close()
		}
		readers.Wait()
	}()
	// The payload of a chat message, as the e2e benchmarks send; its frame
	// is 2 bytes of header and the payload.
	msg := pubsub.Message{Channel: "room", Data: []byte(`{"type":"chat","text":"hello"}`)}
	perOp := int64(n * burst * (2 + len(msg.Data)))

	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	cpu0 := cpuTime(b)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		done := sink.expect(int64(i+1) * perOp)
		for range burst {
			h.Deliver(msg)
		}
		<-done
	}
	b.StopTimer()
	cpu := cpuTime(b) - cpu0
	runtime.ReadMemStats(&ms1)
	deliveries := float64(b.N * n * burst)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/deliveries, "ns/delivery")
	b.ReportMetric(float64(cpu.Nanoseconds())/deliveries, "cpu-ns/delivery")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/deliveries, "allocs/delivery")
	b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/deliveries, "B/delivery")
	if !pair {
		b.ReportMetric(float64(sink.writes.Load())/deliveries, "writes/delivery")
	}
}

// cpuTime is the CPU this process has used, user and system: with
// socketpairs, the readers' share is in it too.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// byteSink counts what reached the clients, and signals once a target is
// reached.
type byteSink struct {
	bytes  atomic.Int64
	writes atomic.Int64
	mu     sync.Mutex
	target int64
	done   chan struct{}
}

func (s *byteSink) expect(target int64) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.target, s.done = target, make(chan struct{})
	if s.bytes.Load() >= target {
		close(s.done)
		s.done = nil
		return closedChan
	}
	return s.done
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (s *byteSink) add(n int) {
	if s.bytes.Add(int64(n)) < s.target {
		return
	}
	s.mu.Lock()
	if s.done != nil && s.bytes.Load() >= s.target {
		close(s.done)
		s.done = nil
	}
	s.mu.Unlock()
}

func (s *byteSink) drain(c net.Conn) {
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		s.add(n)
		if err != nil {
			return
		}
	}
}

// discardConn is a socket that takes every write at once.
type discardConn struct {
	net.Conn // nil: only what the write path uses is implemented
	sink     *byteSink
}

func (d *discardConn) Write(p []byte) (int, error) {
	d.sink.writes.Add(1)
	d.sink.add(len(p))
	return len(p), nil
}
func (d *discardConn) Close() error                     { return nil }
func (d *discardConn) SetWriteDeadline(time.Time) error { return nil }
func (d *discardConn) SetDeadline(time.Time) error      { return nil }
func (d *discardConn) SetReadDeadline(time.Time) error  { return nil }
func (d *discardConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (d *discardConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }

// socketPair is a connected pair of Unix stream sockets.
func socketPair(b testing.TB) (net.Conn, net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

// serverWS makes the server side of a WebSocket on c, through the library's
// net/http upgrader and a handshake that never touches c.
func serverWS(b testing.TB, c net.Conn) *websocket.Conn {
	req, err := http.NewRequest(http.MethodGet, "http://bench/ws", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	u := websocket.Upgrader{ReadBufferSize: 512, WriteBufferSize: 4096, WriteBufferPool: &writePool}
	ws, err := u.Upgrade(&hijacker{conn: c}, req, nil)
	if err != nil {
		b.Fatal(err)
	}
	return ws
}

// hijacker hands the upgrader c, and swallows the 101.
type hijacker struct {
	http.ResponseWriter
	conn net.Conn
	h    http.Header
}

func (h *hijacker) Header() http.Header {
	if h.h == nil {
		h.h = http.Header{}
	}
	return h.h
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return &handshakeConn{Conn: h.conn}, bufio.NewReadWriter(bufio.NewReader(h.conn), bufio.NewWriter(devNull{})), nil
}

// handshakeConn drops the 101 the upgrader writes straight to the socket,
// and passes every later write.
type handshakeConn struct {
	net.Conn
	upgraded bool
}

func (c *handshakeConn) Write(p []byte) (int, error) {
	if !c.upgraded {
		c.upgraded = true
		return len(p), nil
	}
	return c.Conn.Write(p)
}

type devNull struct{}

func (devNull) Write(p []byte) (int, error) { return len(p), nil }
