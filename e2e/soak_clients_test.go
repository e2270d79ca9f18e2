//go:build soak

package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fasthttp/websocket"
)

// soakClients is the soak's population: each worker is one user who
// connects to a node in rotation, chats in its room, leaves after a while
// (with a close frame, or by dropping the socket) and comes back, and who
// reconnects, after a pause, whenever the server closes on it or refuses
// it. Nothing here calls the test: workers only count and record.
type soakClients struct {
	cfg   soakConfig
	nodes *soakNodes
	began time.Time
	stop  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup

	mu       sync.Mutex
	sessions map[string]*clientSession // by connection id: every connection a client saw open
	codes    map[string]int            // how sessions ended, for the report

	dials, refused, opened, sent, received atomic.Int64
	live                                   atomic.Int64 // connections open now
}

// clientSession is what one client saw of one connection.
type clientSession struct {
	node   string        // the node it dialled
	opened time.Duration // since the soak began
	ended  time.Duration
	how    string // "left: close frame", "left: dropped the socket", "server closed 1012", "read error"…
}

// The longest a worker pauses between tries, and the most sessions one
// worker opens: both keep a stuck soak from spinning.
const (
	maxClientBackoff  = 5 * time.Second
	maxClientSessions = 100_000
	maxClientMessages = 100_000 // per session
)

func newSoakClients(cfg soakConfig, nodes *soakNodes, began time.Time) *soakClients {
	return &soakClients{
		cfg: cfg, nodes: nodes, began: began,
		stop:     make(chan struct{}),
		sessions: map[string]*clientSession{},
		codes:    map[string]int{},
	}
}

// start launches the workers, spread over ramp.
func (s *soakClients) start(ramp time.Duration) {
	for i := range s.cfg.Clients {
		delay := ramp * time.Duration(i) / time.Duration(s.cfg.Clients)
		s.wg.Go(func() {
			if s.pause(delay) {
				return
			}
			s.worker(i)
		})
	}
}

// leave tells every client to leave and waits up to timeout for all of
// them to be gone; it reports whether they all were.
func (s *soakClients) leave(timeout time.Duration) bool {
	s.once.Do(func() { close(s.stop) })
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// pause waits d and reports whether the clients were told to leave
// meanwhile.
func (s *soakClients) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.stop:
		return true
	case <-t.C:
		return false
	}
}

func (s *soakClients) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

func (s *soakClients) worker(i int) {
	rng := rand.New(rand.NewPCG(uint64(i), uint64(s.began.UnixNano())))
	// Clients come from 127.0.0.2–127.0.0.201, as from many hosts: no
	// source address runs short of ephemeral ports, and per-address limits
	// see a crowd, not one client.
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%200))}
	nd := &net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}
	d := &websocket.Dialer{HandshakeTimeout: 10 * time.Second, NetDialContext: nd.DialContext}
	room := "r" + strconv.Itoa(i%s.cfg.rooms())
	backoff := 250 * time.Millisecond
	for range maxClientSessions {
		if s.stopping() {
			return
		}
		url, node := s.nodes.pick(rng)
		var ok bool
		if url != "" {
			ok = s.session(rng, d, url, node, room)
		}
		var wait time.Duration
		if ok {
			// Reconnect like a browser would after the server closed:
			// soon, but not all at once.
			backoff = 250 * time.Millisecond
			wait = time.Duration(rng.Int64N(int64(time.Second)))
		} else {
			wait = backoff/2 + time.Duration(rng.Int64N(int64(backoff)))
			backoff = min(2*backoff, maxClientBackoff)
		}
		if s.pause(wait) {
			return
		}
	}
}

// session is one connection from dial to end; it reports whether the
// connection opened.
func (s *soakClients) session(rng *rand.Rand, d *websocket.Dialer, url, node, room string) bool {
	s.dials.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	conn, resp, err := d.DialContext(ctx, wsURL(url)+"/ws/soak?room="+room, nil)
	cancel()
	if err != nil {
		s.refused.Add(1)
		if resp != nil {
			s.count(fmt.Sprintf("refused %d", resp.StatusCode))
		} else {
			s.count("refused: no answer")
		}
		return false
	}
	defer conn.Close()
	// The app's accept body, the first message, is the connection id.
	_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, first, err := conn.ReadMessage()
	if err != nil {
		s.count("no first message")
		return false
	}
	sess := &clientSession{node: node, opened: time.Since(s.began)}
	s.mu.Lock()
	s.sessions[string(first)] = sess
	s.mu.Unlock()
	s.opened.Add(1)
	s.live.Add(1)

	ended := make(chan string, 1)
	go func() { ended <- s.read(conn) }()
	finish := func(how string) bool {
		s.live.Add(-1)
		s.mu.Lock()
		sess.ended, sess.how = time.Since(s.began), how
		s.mu.Unlock()
		s.count(how)
		return true
	}

	life := time.NewTimer(expDuration(rng, s.cfg.Lifetime, time.Second, 4*s.cfg.Lifetime))
	defer life.Stop()
	next := time.NewTimer(expDuration(rng, s.cfg.MessageEvery, 50*time.Millisecond, 4*s.cfg.MessageEvery))
	defer next.Stop()
	for seq := 1; seq <= maxClientMessages; {
		select {
		case how := <-ended:
			return finish(how)
		case <-next.C:
			_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := conn.WriteMessage(websocket.TextMessage, []byte(strconv.Itoa(seq))); err != nil {
				conn.Close()
				return finish(s.await(ended, "write error"))
			}
			s.sent.Add(1)
			seq++
			next.Reset(expDuration(rng, s.cfg.MessageEvery, 50*time.Millisecond, 4*s.cfg.MessageEvery))
		case <-life.C:
			return finish(s.depart(rng, conn, ended))
		case <-s.stop:
			return finish(s.depart(rng, conn, ended))
		}
	}
	return finish(s.depart(rng, conn, ended))
}

// depart leaves: most clients with a close frame (1000), the others by
// dropping the socket, as a closed laptop does (1006, by: client).
func (s *soakClients) depart(rng *rand.Rand, conn *websocket.Conn, ended chan string) string {
	if rng.IntN(10) < 3 {
		conn.Close()
		<-ended
		return "left: dropped the socket"
	}
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")
	if err := conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(5*time.Second)); err != nil {
		conn.Close()
		return s.await(ended, "left: close frame not sent")
	}
	// The server answers the close frame; the reader sees it.
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-ended:
	case <-t.C:
		conn.Close()
		<-ended
		return "left: no close answer in 5s"
	}
	return "left: close frame"
}

// await waits for the reader after the socket was closed under it.
func (s *soakClients) await(ended chan string, how string) string {
	<-ended
	return how
}

// read drains the connection until it ends and says how it ended. Pings
// are answered by the library on the way.
func (s *soakClients) read(conn *websocket.Conn) string {
	for range math.MaxInt32 {
		// The server pings every ping_interval; a longer silence is a dead
		// node.
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, _, err := conn.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return fmt.Sprintf("closed %d", ce.Code)
			}
			return "read error"
		}
		s.received.Add(1)
	}
	return "read loop bound reached"
}

// tally is how sessions ended so far.
func (s *soakClients) tally() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.codes)
}

func (s *soakClients) count(how string) {
	s.mu.Lock()
	s.codes[how]++
	s.mu.Unlock()
}

// sessionOf is what the clients saw of connection id, if they saw it open.
func (s *soakClients) sessionOf(id string) (clientSession, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[id]
	if !ok {
		return clientSession{}, false
	}
	return *sess, true
}

// ids are the connection ids the clients saw open.
func (s *soakClients) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.sessions))
	for id := range s.sessions {
		out = append(out, id)
	}
	return out
}

// expDuration draws from an exponential distribution of the given mean,
// clamped to [lo, hi]: arrivals at random, with no pathological tail.
func expDuration(rng *rand.Rand, mean, lo, hi time.Duration) time.Duration {
	d := time.Duration(rng.ExpFloat64() * float64(mean))
	return min(max(d, lo), hi)
}
