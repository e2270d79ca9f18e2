package callback

import (
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

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

// span is what identifies a batch once its body is built: the numbers of
// its first and last events, how many it holds, and whether the last is
// a close event.
type span struct {
	first, last uint64
	events      int
	close       bool
}

func spanOf(batch []queued) span {
	last := batch[len(batch)-1]
	return span{first: batch[0].n, last: last.n, events: len(batch), close: last.ev.Type == EventClose}
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
	runFn        func()        // run, bound once
	closing      bool          // a close event was pushed, or End called: later pushes are dropped
	failed       bool          // Fail was called: only a close event is still delivered
	failReason   dropReason    // why, for what is dropped after
	parked       bool          // the close event waits in the client's close queue
	done         bool          // doneCh is closed
	space        chan struct{} // closed when pending shrinks; made by a Push that waits
	doneCh       chan struct{}

	// batch is reused by the delivering goroutine (one at a time).
	batch []queued
	// acks wait for events to be answered (PushShutdown, shutdown.go).
	acks []streamAck

	// abort ends the stream's waits: the client's (shutdown gave up), or
	// for a lost connection's close event, its caller's too.
	abort <-chan struct{}
	// counted: the client's Wait waits for this stream.
	counted bool
	// quiet: what is dropped from now on is not counted (its caller
	// still holds the event, and may post it again).
	quiet atomic.Bool
	// after is called once the close event was delivered or finally
	// dropped; never when shutdown abandoned it. Guarded by mu until the
	// close event is queued, then the delivering goroutine's.
	after func()
	// every, onEvery: session restore's numbering hook (session.go).
	every   uint64
	onEvery func(n uint64)
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

// dropped counts events that will never reach the app.
func (s *Stream) dropped(reason dropReason, closes, n int) {
	if n == 0 || s.quiet.Load() {
		return
	}
	s.c.m.dropped[reason].Add(float64(n))
	switch {
	case closes == 0:
	case reason == dropShutdown:
		// Not lost yet: with Redis, the record stays for another node.
		s.c.m.closeAbandoned.Add(float64(closes))
	default:
		s.c.m.closeDropped.Add(float64(closes))
	}
}

// settled says the close event was delivered or finally dropped: the
// connection's record is no longer needed, nor its place among what
// shutdown leaves undelivered.
func (s *Stream) settled() {
	if s.counted {
		s.c.closing.remove(s.id)
	}
	if f := s.after; f != nil {
		s.after = nil
		f()
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
func (s *Stream) Push(ev Event) { s.push(ev, nil) }

// PushClose pushes the connection's close event, as Push does, and calls
// after once the app has it or it was finally dropped (rejected, retried
// for close_retry_for, pushed out of the close queue; refused because the
// stream was ended): the connection's record in Redis can then go. after
// runs on the goroutine that settled the event — PushClose's caller's only
// when it is refused at once — and must not block. It is never called
// when shutdown abandons the event: the record then stays, and a
// surviving node posts it (SPEC §5).
func (s *Stream) PushClose(ev Event, after func()) {
	ev.Type = EventClose
	s.push(ev, after)
}

func (s *Stream) push(ev Event, after func()) {
	isClose := ev.Type == EventClose
	s.mu.Lock()
	for {
		reason, drop := s.refuseLocked(isClose)
		if drop {
			if isClose {
				s.refusedCloseLocked(ev, reason)
			}
			s.mu.Unlock()
			s.dropped(reason, b2i(isClose), 1)
			if after != nil && reason != dropShutdown {
				after()
			}
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
	if isClose {
		s.after = after
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

// refusedCloseLocked notes a close event refused because shutdown gave
// up: it is owed all the same, under the number it would have had.
func (s *Stream) refusedCloseLocked(ev Event, reason dropReason) {
	if reason == dropShutdown && s.counted {
		s.c.closing.add(s.id, s.seq+1, ev)
	}
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
		} else if final.Type == EventClose {
			s.refusedCloseLocked(*final, reason)
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
	if s.onEvery != nil && s.seq%s.every == 0 {
		s.onEvery(s.seq)
	}
	s.pending = append(s.pending, queued{ev: ev, n: s.seq})
	s.pendingBytes += len(ev.Data)
	if ev.Type == EventClose && s.counted {
		ce := s.c.closing.add(s.id, s.seq, ev)
		if f := s.c.numbered; f != nil {
			f(s.id, ce)
		}
	}
	if !s.running {
		s.running = true
		if s.runFn == nil {
			s.runFn = s.run // bound once: go s.run() allocates it each time
		}
		go s.runFn()
	}
}

// finishLocked closes doneCh once the stream is closing with nothing left
// to deliver and no goroutine delivering.
func (s *Stream) finishLocked() {
	if s.done || !s.closing || s.running || s.parked || len(s.pending) > 0 {
		return
	}
	s.done = true
	close(s.doneCh)
	s.ackAllLocked()
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
	var answered uint64 // the last event number of the batch just delivered
	for {
		s.mu.Lock()
		if len(s.acks) > 0 {
			s.ackLocked(answered)
		}
		if s.aborted() && len(s.pending) > 0 {
			s.dropPendingLocked(dropShutdown, true)
			s.closing = true
		}
		if len(s.pending) == 0 {
			s.running = false
			// An idle connection keeps no large buffers, a parked close
			// event none at all.
			if cap(s.pending) > 8 || s.parked {
				s.pending = nil
			}
			if cap(s.batch) > 8 || s.parked {
				s.batch = nil
			}
			s.finishLocked()
			s.mu.Unlock()
			return
		}
		s.batch = s.takeLocked(s.batch[:0])
		answered = s.batch[len(s.batch)-1].n
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
func (s *Stream) fail(why Failure) {
	s.mu.Lock()
	if s.failed {
		s.mu.Unlock()
		return
	}
	s.failed = true
	s.failReason = dropUpstream
	if why == AppClosed {
		s.failReason = dropGone
	}
	s.dropPendingLocked(s.failReason, false)
	s.mu.Unlock()
	s.t.Fail(why)
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

// deliver sends one batch until the app has it, or gives up on it. A
// batch that ends with the close event and fails its first attempt is
// parked in the client's close queue rather than retried here: the
// connection is gone, and what waits must be the event, not the stream's
// goroutine nor the connection's memory.
func (s *Stream) deliver(batch []queued) {
	c := s.c
	sp := spanOf(batch)
	buf := getBody()
	*buf = appendBody(*buf, s.id, s.t.Info(), batch)
	defer putBody(buf)

	first := time.Now()
	for attempt := 1; ; attempt++ {
		if !c.acquire(s.abort) {
			s.drop(sp, dropShutdown)
			return
		}
		res := s.post(*buf, sp, attempt)
		c.release()
		if s.answered(res, sp) {
			return
		}
		if sp.close {
			c.closes.park(s, slices.Clone(*buf), sp, first, attempt, res)
			return
		}
		if attempt > c.cfg.Retries {
			s.log(c.log.Warn(), sp).Int("attempts", attempt).
				Str("outcome", outcomeNames[res.outcome]).Int("status", res.status).AnErr("last_error", res.err).
				Msg("events not delivered: the app kept failing; closing the connection")
			s.drop(sp, dropUpstream)
			s.fail(AppUnavailable)
			return
		}
		wait := backoff(attempt, c.backoffBase, c.backoffCap)
		if res.hasRetry {
			wait = res.retryAfter
		}
		c.m.retries.Inc()
		s.log(c.log.Debug(), sp).Int("attempt", attempt).Str("outcome", outcomeNames[res.outcome]).
			Int("status", res.status).AnErr("error", res.err).Dur("retry_in_ms", wait).Msg("events will be sent again")
		if !s.sleep(wait) {
			s.drop(sp, dropShutdown)
			return
		}
	}
}

// answered carries out an answer that ends a batch's attempts (2xx, 410,
// another 4xx) and says so; false when the batch is worth another try.
func (s *Stream) answered(res result, sp span) bool {
	c := s.c
	switch res.outcome {
	case outcomeOK, outcomeInvalid:
		c.m.events.Add(float64(sp.events))
		if res.outcome == outcomeInvalid {
			s.log(c.log.Warn(), sp).Int("status", res.status).Err(res.err).
				Msg("the app's reply is invalid and was ignored")
		}
		if res.reply != nil && !res.reply.Empty() {
			s.t.Apply(res.reply)
		}
	case outcomeGone:
		// The app knows the connection is gone; a close event it
		// answers 410 is not lost.
		if !sp.close {
			s.log(c.log.Info(), sp).Msg("the app answered 410: closing the connection")
			s.drop(sp, dropGone)
			s.fail(AppClosed)
			return true
		}
		s.dropped(dropGone, 0, sp.events-1)
	case outcomeRejected:
		s.log(c.log.Warn(), sp).Int("status", res.status).Msg("the app rejected events: dropped")
		s.drop(sp, dropRejected)
	default:
		return false
	}
	if sp.close {
		s.settled()
	}
	return true
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
func (s *Stream) drop(sp span, reason dropReason) {
	s.dropped(reason, b2i(sp.close), sp.events)
	if reason == dropShutdown {
		s.log(s.c.log.Debug(), sp).Msg("shutdown: events dropped")
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// log adds what identifies a batch; never a header value nor a body.
func (s *Stream) log(e *zerolog.Event, sp span) *zerolog.Event {
	if !e.Enabled() {
		return e
	}
	ids := s.id + ":" + strconv.FormatUint(sp.first, 10)
	if sp.last != sp.first {
		ids += "…" + strconv.FormatUint(sp.last, 10)
	}
	return e.Str("conn_id", s.id).Str("event_ids", ids).Int("events", sp.events)
}
