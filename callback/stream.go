package callback

import (
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/auth"
)

// EventType is the type of an event webhook.
type EventType string

// The event types of SPEC §3.
const (
	EventOpen    EventType = "open"
	EventMessage EventType = "message"
	EventClose   EventType = "close"
)

// Event is one thing that happened on a connection.
type Event struct {
	Type   EventType
	Data   []byte // message payload (the caller hands over ownership)
	Binary bool
	Code   int    // close only
	Reason string // close only
	By     string // close only: client, app, timeout, slow, rate_limit, too_big, protocol, expired, upstream, shutdown, node_lost, error
}

// ConnInfo is the "connection" object of the JSON body, a snapshot taken
// when a request is built.
type ConnInfo struct {
	ID       string
	State    string
	Channels []string
	Claims   json.RawMessage // nil → omitted
}

// Target is the connection a Stream delivers for.
type Target interface {
	// Info is called from the stream's goroutine before each request.
	Info() ConnInfo
	// Apply carries out the app's reply to a batch. Called from the
	// stream's goroutine, one at a time, in order.
	Apply(r *Reply)
	// Fail says the app refused the connection for good: gone=true for
	// 410 (close by app), gone=false when retries of an open/message batch
	// ran out (close 1011 by upstream). Called at most once, from the
	// stream's goroutine; the connection is expected to push its close
	// event (or End the stream) in answer, which is still delivered.
	Fail(gone bool)
}

// Limits of a stream's queue and of one request.
const (
	// Push blocks while this much waits behind the request in flight.
	maxQueueEvents = 64
	maxQueueBytes  = 1 << 20
	// One request carries at most this much; a single larger event goes
	// alone.
	maxBatchEvents = 100
	maxBatchBytes  = 1 << 20
)

// queued is an event with its number n: its id is "<connection id>:<n>".
type queued struct {
	ev Event
	n  uint64
}

// Stream is the ordered event stream of one connection: one request in
// flight at a time, what queues up meanwhile going together in the next.
//
// It runs a goroutine only while it has events to deliver, so an idle
// connection costs no goroutine. Push is called by the connection's read
// loop, and blocking it is how a slow app, or the global cap, stops the
// socket from being read.
type Stream struct {
	c       *Client
	t       Target
	id      string
	path    string
	headers [][2]string

	mu           sync.Mutex
	pending      []queued // not yet taken into a request
	pendingBytes int
	seq          uint64        // the last event number handed out
	running      bool          // a goroutine is delivering
	closing      bool          // a close event was pushed, or End called: later pushes are dropped
	failed       bool          // Fail was called: only a close event is still delivered
	failReason   dropReason    // why, for what is dropped after
	done         bool          // doneCh is closed
	space        chan struct{} // closed when pending shrinks; made by a Push that waits
	doneCh       chan struct{}

	// batch is reused by the delivering goroutine (one at a time).
	batch []queued

	// abort ends the stream's waits: the client's (shutdown gave up), or
	// for a lost connection's close event, its caller's too.
	abort <-chan struct{}
	// counted: the client's Wait waits for this stream.
	counted bool
	// quiet: what is dropped from now on is not counted (its caller
	// still holds the event, and may post it again).
	quiet atomic.Bool
	// closeLost is 1 + the reason the close event was dropped; 0 while it
	// was not.
	closeLost atomic.Int32
}

// NewStream starts the ordered event stream of one connection. path is the
// events path (path and query); headers are set verbatim on every POST
// (Host, X-Forwarded-*, and the forwarded handshake headers), except those
// that frame the request, which are Cablecar's to set.
func (c *Client) NewStream(t Target, id string, path string, headers [][2]string) *Stream {
	c.streamStarted()
	return &Stream{c: c, t: t, id: id, path: path, headers: headers, doneCh: make(chan struct{}),
		abort: c.abort, counted: true}
}

func (s *Stream) aborted() bool {
	select {
	case <-s.abort:
		return true
	default:
		return false
	}
}

// dropped counts events that will never reach the app, and remembers why
// the close event, if one of them, was lost.
func (s *Stream) dropped(reason dropReason, closes, n int) {
	if closes > 0 {
		s.closeLost.CompareAndSwap(0, int32(reason)+1)
	}
	if n == 0 || s.quiet.Load() {
		return
	}
	s.c.m.dropped[reason].Add(float64(n))
	if closes > 0 {
		s.c.m.closeDropped.Add(float64(closes))
	}
}

// Done is closed once the stream has delivered (or finally dropped)
// everything, its close event included.
func (s *Stream) Done() <-chan struct{} { return s.doneCh }

// Push queues an event, numbering it. It blocks while too much waits
// undelivered (64 events or 1 MiB behind the request in flight; a single
// event is always taken into an empty queue), never for a close event.
// After a close event or End, events are dropped; so are they once the
// app refused the connection (only its close event is still delivered) or
// shutdown gave up (Wait's ctx ended): Push then returns at once, also
// when it was waiting.
func (s *Stream) Push(ev Event) {
	isClose := ev.Type == EventClose
	s.mu.Lock()
	for {
		reason, drop := s.refuseLocked(isClose)
		if drop {
			s.mu.Unlock()
			s.dropped(reason, b2i(isClose), 1)
			return
		}
		if isClose || len(s.pending) == 0 ||
			(len(s.pending) < maxQueueEvents && s.pendingBytes < maxQueueBytes) {
			break
		}
		if s.space == nil {
			s.space = make(chan struct{})
		}
		space := s.space
		s.mu.Unlock()
		select {
		case <-space:
		case <-s.abort:
		}
		s.mu.Lock()
	}
	s.enqueueLocked(ev)
	if isClose {
		// Nothing may follow the close event: a Push waiting for room
		// (another goroutine's) gives up now.
		s.closing = true
		s.wakeLocked()
	}
	s.mu.Unlock()
}

// refuseLocked says whether an event pushed now is dropped, and why.
func (s *Stream) refuseLocked(isClose bool) (dropReason, bool) {
	switch {
	case s.closing:
		return dropClosed, true
	case s.aborted():
		// Shutdown gave up: nothing more will be delivered, so the
		// stream ends here.
		s.closing = true
		s.finishLocked()
		return dropShutdown, true
	case s.failed && !isClose:
		return s.failReason, true
	}
	return 0, false
}

// End says no more events will come. final, when not nil, is queued first
// as the last event, without blocking.
func (s *Stream) End(final *Event) {
	s.mu.Lock()
	var reason dropReason
	drop := false
	if final != nil {
		if reason, drop = s.refuseLocked(final.Type == EventClose); !drop {
			s.enqueueLocked(*final)
		}
	}
	s.closing = true
	s.wakeLocked()
	s.finishLocked()
	s.mu.Unlock()
	if drop {
		s.dropped(reason, b2i(final.Type == EventClose), 1)
	}
}

// enqueueLocked numbers ev and queues it, starting the delivering
// goroutine when there is none.
func (s *Stream) enqueueLocked(ev Event) {
	s.seq++
	s.pending = append(s.pending, queued{ev: ev, n: s.seq})
	s.pendingBytes += len(ev.Data)
	if !s.running {
		s.running = true
		go s.run()
	}
}

// finishLocked closes doneCh once the stream is closing with nothing left
// to deliver and no goroutine delivering.
func (s *Stream) finishLocked() {
	if s.done || !s.closing || s.running || len(s.pending) > 0 {
		return
	}
	s.done = true
	close(s.doneCh)
	if s.counted {
		s.c.streamDone()
	}
}

// wakeLocked lets a waiting Push look again.
func (s *Stream) wakeLocked() {
	if s.space != nil {
		close(s.space)
		s.space = nil
	}
}

// run delivers batches until the queue is empty.
func (s *Stream) run() {
	for {
		s.mu.Lock()
		if s.aborted() && len(s.pending) > 0 {
			s.dropPendingLocked(dropShutdown, true)
			s.closing = true
		}
		if len(s.pending) == 0 {
			s.running = false
			// An idle connection keeps no large buffers.
			if cap(s.pending) > 8 {
				s.pending = nil
			}
			if cap(s.batch) > 8 {
				s.batch = nil
			}
			s.finishLocked()
			s.mu.Unlock()
			return
		}
		s.batch = s.takeLocked(s.batch[:0])
		s.wakeLocked()
		s.mu.Unlock()

		s.deliver(s.batch)
		clear(s.batch) // let the GC have the payloads
	}
}

// takeLocked moves the next batch from pending into dst.
func (s *Stream) takeLocked(dst []queued) []queued {
	n, size := 0, 0
	for n < len(s.pending) && n < maxBatchEvents {
		d := len(s.pending[n].ev.Data)
		if n > 0 && size+d > maxBatchBytes {
			break
		}
		size += d
		n++
	}
	dst = append(dst, s.pending[:n]...)
	rest := copy(s.pending, s.pending[n:])
	clear(s.pending[rest:])
	s.pending = s.pending[:rest]
	s.pendingBytes -= size
	return dst
}

// dropPendingLocked drops what waits: all of it, or all but the close
// event, which a refused connection still owes the app.
func (s *Stream) dropPendingLocked(reason dropReason, all bool) {
	kept := s.pending[:0]
	n, closes := 0, 0
	for _, q := range s.pending {
		if q.ev.Type == EventClose && !all {
			kept = append(kept, q)
			continue
		}
		n++
		if q.ev.Type == EventClose {
			closes++
		}
		s.pendingBytes -= len(q.ev.Data)
	}
	clear(s.pending[len(kept):])
	s.pending = kept
	if n > 0 {
		s.dropped(reason, closes, n)
		s.c.log.Debug().Str("conn_id", s.id).Int("events", n).Str("reason", dropNames[reason]).
			Msg("queued events dropped")
	}
	s.wakeLocked()
}

// fail stops delivering all but the close event and tells the target,
// once.
func (s *Stream) fail(gone bool) {
	s.mu.Lock()
	if s.failed {
		s.mu.Unlock()
		return
	}
	s.failed = true
	s.failReason = dropUpstream
	if gone {
		s.failReason = dropGone
	}
	s.dropPendingLocked(s.failReason, false)
	s.mu.Unlock()
	s.t.Fail(gone)
}

// result is what one attempt of an events request came to.
type result struct {
	outcome    outcome
	status     int
	reply      *Reply
	err        error         // transport error, or why the reply is invalid
	retryAfter time.Duration // from the app; valid when hasRetry
	hasRetry   bool
}

// deliver sends one batch until the app has it, or gives up on it.
func (s *Stream) deliver(batch []queued) {
	c := s.c
	hasClose := batch[len(batch)-1].ev.Type == EventClose
	buf := getBody()
	*buf = appendBody(*buf, s.id, s.t.Info(), batch)
	defer putBody(buf)

	first := time.Now()
	for attempt := 1; ; attempt++ {
		if !c.acquire(s.abort) {
			s.drop(batch, dropShutdown)
			return
		}
		res := s.post(*buf, batch, attempt)
		c.release()

		switch res.outcome {
		case outcomeOK, outcomeInvalid:
			c.m.events.Add(float64(len(batch)))
			if res.outcome == outcomeInvalid {
				s.log(c.log.Warn(), batch).Int("status", res.status).Err(res.err).
					Msg("the app's reply is invalid and was ignored")
			}
			if res.reply != nil && !res.reply.Empty() {
				s.t.Apply(res.reply)
			}
			return
		case outcomeGone:
			// The app knows the connection is gone; a close event it
			// answers 410 is not lost.
			if hasClose {
				s.dropped(dropGone, 0, len(batch)-1)
				return
			}
			s.log(c.log.Info(), batch).Msg("the app answered 410: closing the connection")
			s.drop(batch, dropGone)
			s.fail(true)
			return
		case outcomeRejected:
			s.log(c.log.Warn(), batch).Int("status", res.status).Msg("the app rejected events: dropped")
			s.drop(batch, dropRejected)
			return
		}

		// Worth another try.
		elapsed := time.Since(first)
		if hasClose {
			if elapsed >= c.cfg.CloseRetryFor {
				s.log(c.log.Error(), batch).Int("attempts", attempt).Dur("retried_for", elapsed).
					Str("outcome", outcomeNames[res.outcome]).Int("status", res.status).AnErr("last_error", res.err).
					Msg("close event not delivered: the app kept failing; dropped")
				s.drop(batch, dropRetryLimit)
				return
			}
		} else if attempt > c.cfg.Retries {
			s.log(c.log.Warn(), batch).Int("attempts", attempt).
				Str("outcome", outcomeNames[res.outcome]).Int("status", res.status).AnErr("last_error", res.err).
				Msg("events not delivered: the app kept failing; closing the connection")
			s.drop(batch, dropUpstream)
			s.fail(false)
			return
		}
		wait := backoff(attempt, c.backoffBase, c.backoffCap)
		if res.hasRetry {
			wait = res.retryAfter
		}
		if hasClose {
			wait = min(wait, c.cfg.CloseRetryFor-elapsed)
		}
		c.m.retries.Inc()
		s.log(c.log.Debug(), batch).Int("attempt", attempt).Str("outcome", outcomeNames[res.outcome]).
			Int("status", res.status).AnErr("error", res.err).Dur("retry_in", wait).Msg("events will be sent again")
		if !s.sleep(wait) {
			s.drop(batch, dropShutdown)
			return
		}
	}
}

// sleep pauses for d; false when shutdown gave up meanwhile.
func (s *Stream) sleep(d time.Duration) bool {
	if d <= 0 {
		return !s.aborted()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.abort:
		return false
	}
}

// drop counts a batch that will never reach the app.
func (s *Stream) drop(batch []queued, reason dropReason) {
	s.dropped(reason, b2i(batch[len(batch)-1].ev.Type == EventClose), len(batch))
	if reason == dropShutdown {
		s.log(s.c.log.Debug(), batch).Msg("shutdown: events dropped")
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// log adds what identifies a batch; never a header value nor a body.
func (s *Stream) log(e *zerolog.Event, batch []queued) *zerolog.Event {
	if !e.Enabled() {
		return e
	}
	first, last := batch[0].n, batch[len(batch)-1].n
	ids := s.id + ":" + strconv.FormatUint(first, 10)
	if last != first {
		ids += "…" + strconv.FormatUint(last, 10)
	}
	return e.Str("conn_id", s.id).Str("event_ids", ids).Int("events", len(batch))
}

// Headers of the given list that are not set on event requests: they frame
// the request or carry Cablecar's own meaning.
var framingHeaders = map[string]bool{
	"content-length": true, "transfer-encoding": true, "connection": true, "keep-alive": true,
	"te": true, "trailer": true, "upgrade": true, "expect": true, "content-type": true,
	"cablecar-signature": true, "cablecar-connection-id": true,
}

func skipHeader(name string) bool {
	if len(name) > len("transfer-encoding") {
		return false // none of framingHeaders is this long, save the lowering
	}
	var b [32]byte
	lower := b[:0]
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower = append(lower, c)
	}
	return framingHeaders[string(lower)]
}

// post makes one attempt of an events request, holding a slot of the cap.
func (s *Stream) post(body []byte, batch []queued, attempt int) result {
	c := s.c
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)

	h := &req.Header
	h.SetMethod(fasthttp.MethodPost)
	h.SetRequestURI(s.path)
	req.UseHostHeader = true
	for _, kv := range s.headers {
		if !skipHeader(kv[0]) {
			h.Set(kv[0], kv[1])
		}
	}
	if len(h.Host()) == 0 {
		h.SetHost(c.host)
	}
	h.SetContentType("application/json")
	h.Set("Cablecar-Connection-Id", s.id)
	if c.signer.Enabled() {
		h.Set(auth.SignatureHeader, c.signer.Sign(time.Now(), body))
	}
	req.SetBodyRaw(body)

	c.inFlight.Add(1)
	c.m.inFlight.Inc()
	start := time.Now()
	err := c.hc.DoTimeout(req, resp, c.cfg.Timeout)
	elapsed := time.Since(start)
	c.m.inFlight.Dec()
	c.inFlight.Add(-1)
	c.m.duration[kindEvents].Observe(elapsed.Seconds())

	res := s.result(resp, err)
	c.m.webhooks[kindEvents][res.outcome].Inc()
	s.log(c.log.Debug(), batch).Int("attempt", attempt).Int("status", res.status).
		Str("outcome", outcomeNames[res.outcome]).Dur("duration", elapsed).Msg("events callback")
	return res
}

func (s *Stream) result(resp *fasthttp.Response, err error) result {
	c := s.c
	status := resp.StatusCode()
	if err != nil {
		if errors.Is(err, fasthttp.ErrBodyTooLarge) && status >= 200 && status < 300 {
			// The app took the events; only its reply is unusable.
			return result{outcome: outcomeInvalid, status: status,
				err: errors.Join(ErrInvalidReply, errors.New("reply body larger than "+strconv.Itoa(c.cfg.MaxReplySize)+" bytes"))}
		}
		if !errors.Is(err, fasthttp.ErrBodyTooLarge) {
			return result{outcome: errOutcome(err), err: err}
		}
		// A large error page: its status is what counts.
	}
	res := result{outcome: statusOutcome(status), status: status}
	switch res.outcome {
	case outcomeOK:
		if err == nil {
			res.reply, res.err = ParseReply(resp.Header.ContentType(), resp.Body())
			if res.err != nil {
				res.outcome = outcomeInvalid
			}
		}
	case outcomeFailed:
		res.retryAfter, res.hasRetry = retryAfter(resp.Header.Peek(fasthttp.HeaderRetryAfter), time.Now(), c.retryAfterCap)
	}
	return res
}
