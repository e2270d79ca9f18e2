package callback

import (
	"container/heap"
	"sync"
	"time"

	"github.com/cablecar/cablecar/registry"
)

// A close event is owed to the app for as long as Cablecar runs (SPEC §3):
// an app that counts who is online never learns otherwise that a device
// left. So one whose first attempt fails is not retried by its stream
// but parked here, for callback.close_retry_for, with at most 30 s
// (CloseBackoffCap) between tries.
//
// What waits is only the event: its request body, built once, and what
// posting it needs (the stream's id, path and headers). The connection
// (its socket, buffers and goroutines) is let go; of the app's reply only
// publish is carried out, as for a lost node's close event — there is no
// socket left for the rest. One scheduler goroutine, running only while
// something waits, sleeps until the next try is due and starts it holding
// a slot of the global cap: 100k waiting close events cost 100k small
// entries and one goroutine, and at most max_in_flight attempts run at
// once, however many come due together after an outage.

// closeQueue holds the parked close events.
type closeQueue struct {
	c   *Client
	max int // callback.max_pending_closes: waiting at most

	mu sync.Mutex
	// due is what waits for its next try, soonest first; oldest…newest
	// is every parked event, waiting or being tried, oldest first: past
	// max, the oldest waiting are dropped.
	due            dueHeap
	oldest, newest *parked
	parked         int  // waiting or being tried: the gauge
	running        bool // the scheduler goroutine exists
	stopped        bool // shutdown gave up: nothing parks any more
	kick           chan struct{}
	// Overflow is logged at most once a second, with the count since.
	overflowed int
	loggedAt   time.Time
}

// parked is one close event (and the events batched before it) waiting
// for its next try.
type parked struct {
	s       *Stream
	body    []byte
	span    span
	since   time.Time // the first attempt
	attempt int       // attempts made
	at      time.Time // the next try
	idx     int       // in due; -1 while being tried
	older   *parked
	newer   *parked
}

func newCloseQueue(c *Client, max int) *closeQueue {
	return &closeQueue{c: c, max: max, kick: make(chan struct{}, 1)}
}

// park takes over the close batch of s after its first attempt failed
// with res. body is the batch's request body, owned from now on.
func (q *closeQueue) park(s *Stream, body []byte, sp span, since time.Time, attempt int, res result) {
	c := q.c
	if _, ok := s.t.(lostTarget); !ok {
		// Let the connection go: its reply's publish is all that is left
		// to carry out.
		s.t = lostTarget{info: ConnInfo{ID: s.id}, pub: c.pub, log: c.log, timeout: c.cfg.Timeout}
	}
	s.mu.Lock()
	s.parked = true
	s.mu.Unlock()
	p := &parked{s: s, body: body, span: sp, since: since, attempt: attempt, idx: -1}
	q.mu.Lock()
	q.linkLocked(p)
	q.mu.Unlock()
	q.retry(p, res)
}

// admit queues the close event of a lost connection (PostLost) for its
// first try, now. Unlike park it takes nothing when the queue is full:
// the event's record waits in Redis instead.
func (q *closeQueue) admit(s *Stream, body []byte, sp span) error {
	p := &parked{s: s, body: body, span: sp, since: time.Now(), idx: -1}
	s.parked = true // s is not shared yet
	q.mu.Lock()
	defer q.mu.Unlock()
	select {
	case <-q.c.abort:
		q.stopped = true
	default:
	}
	switch {
	case q.stopped:
		return ErrShutdown
	case q.parked >= q.max:
		return ErrClosesFull
	}
	q.linkLocked(p)
	p.at = p.since
	heap.Push(&q.due, p)
	q.wakeLocked(p)
	return nil
}

// linkLocked counts p among the parked, as the newest.
func (q *closeQueue) linkLocked(p *parked) {
	q.parked++
	q.c.m.closesPending.Set(float64(q.parked))
	p.older = q.newest
	if q.newest != nil {
		q.newest.newer = p
	} else {
		q.oldest = p
	}
	q.newest = p
}

// wakeLocked has the scheduler look at p, just pushed: it starts one
// when none runs, or wakes it when p is due first.
func (q *closeQueue) wakeLocked(p *parked) {
	switch {
	case !q.running:
		q.running = true
		go q.run()
	case p.idx == 0:
		select {
		case q.kick <- struct{}{}:
		default:
		}
	}
}

// retry schedules the next try of p after a failed attempt, or gives up.
func (q *closeQueue) retry(p *parked, res result) {
	s, c := p.s, q.c
	elapsed := time.Since(p.since)
	if elapsed >= c.cfg.CloseRetryFor {
		s.log(c.log.Error(), p.span).Int("attempts", p.attempt).Dur("retried_for_ms", elapsed).
			Str("outcome", outcomeNames[res.outcome]).Int("status", res.status).AnErr("last_error", res.err).
			Msg("close event not delivered: the app kept failing for callback.close_retry_for; dropped")
		q.end(p, dropRetryLimit)
		return
	}
	if s.aborted() {
		q.end(p, dropShutdown)
		return
	}
	wait := backoff(p.attempt, c.backoffBase, c.closeBackoffCap)
	if res.hasRetry {
		// The app's word, but never a longer silence than the cap.
		wait = min(res.retryAfter, c.closeBackoffCap)
	}
	wait = min(wait, c.cfg.CloseRetryFor-elapsed)
	c.m.retries.Inc()
	s.log(c.log.Debug(), p.span).Int("attempt", p.attempt).Str("outcome", outcomeNames[res.outcome]).
		Int("status", res.status).AnErr("error", res.err).Dur("retry_in_ms", wait).Msg("close event will be sent again")

	q.mu.Lock()
	if q.stopped {
		q.mu.Unlock()
		q.end(p, dropShutdown)
		return
	}
	p.at = time.Now().Add(wait)
	heap.Push(&q.due, p)
	var pushedOut []*parked
	for o := q.oldest; o != nil && len(q.due) > q.max; o = o.newer {
		if o.idx >= 0 {
			heap.Remove(&q.due, o.idx)
			pushedOut = append(pushedOut, o)
		}
	}
	q.wakeLocked(p)
	q.overflowed += len(pushedOut)
	logOverflow := q.overflowed > 0 && time.Since(q.loggedAt) >= time.Second
	n := q.overflowed
	if logOverflow {
		q.overflowed, q.loggedAt = 0, time.Now()
	}
	q.mu.Unlock()
	for _, o := range pushedOut {
		q.end(o, dropOverflow)
	}
	if logOverflow {
		c.log.Error().Int("dropped", n).Int("max_pending_closes", q.max).
			Msg("too many close events waiting for the app: the oldest were dropped (see cablecar_close_events_dropped_total)")
	}
}

// run starts each parked event's try when it is due, until none waits.
func (q *closeQueue) run() {
	c := q.c
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		q.mu.Lock()
		if q.stopped || len(q.due) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		p := q.due[0]
		if d := time.Until(p.at); d > 0 {
			q.mu.Unlock()
			t.Reset(d)
			select {
			case <-t.C:
			case <-q.kick:
			case <-c.abort:
				q.abandonAll()
			}
			continue
		}
		heap.Pop(&q.due)
		q.mu.Unlock()
		// A lost connection's caller may have given up on it (its ctx).
		if p.s.aborted() || !c.acquire(c.abort) {
			q.end(p, dropShutdown)
			continue
		}
		go q.try(p)
	}
}

// try makes one attempt of p, holding a slot of the global cap.
func (q *closeQueue) try(p *parked) {
	p.attempt++
	res := p.s.post(p.body, p.span, p.attempt)
	q.c.release()
	if p.s.answered(res, p.span) {
		q.unpark(p)
		return
	}
	q.retry(p, res)
}

// abandonAll ends every waiting event: shutdown gave up.
func (q *closeQueue) abandonAll() {
	q.mu.Lock()
	q.stopped = true
	waiting := make([]*parked, len(q.due))
	copy(waiting, q.due)
	for _, p := range waiting {
		p.idx = -1
	}
	q.due = nil
	q.mu.Unlock()
	for _, p := range waiting {
		q.end(p, dropShutdown)
	}
}

// end drops p for reason, counted and, unless shutdown abandoned it (its
// record then stays for another node), settled. A lost connection's event
// that is abandoned is not counted: its caller still holds the record.
func (q *closeQueue) end(p *parked, reason dropReason) {
	if reason == dropShutdown && !p.s.counted {
		p.s.quiet.Store(true)
	}
	p.s.drop(p.span, reason)
	if reason != dropShutdown {
		p.s.settled()
	}
	q.unpark(p)
}

// unpark forgets p, and lets its stream be done.
func (q *closeQueue) unpark(p *parked) {
	q.mu.Lock()
	if p.older != nil {
		p.older.newer = p.newer
	} else {
		q.oldest = p.newer
	}
	if p.newer != nil {
		p.newer.older = p.older
	} else {
		q.newest = p.older
	}
	p.older, p.newer, p.body = nil, nil, nil
	q.parked--
	q.c.m.closesPending.Set(float64(q.parked))
	q.mu.Unlock()
	s := p.s
	s.mu.Lock()
	s.parked = false
	s.finishLocked()
	s.mu.Unlock()
}

// dueHeap orders parked events by their next try.
type dueHeap []*parked

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *dueHeap) Push(x any) {
	p := x.(*parked)
	p.idx = len(*h)
	*h = append(*h, p)
}
func (h *dueHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	p.idx = -1
	return p
}

// closingSet is every close event this node owes the app, by connection:
// numbered and not yet delivered nor finally dropped. When shutdown gives
// up, it is what the node hands over (SPEC §5): with Redis, a surviving
// node posts these events with the same ids.
type closingSet struct {
	mu   sync.Mutex
	m    map[string]registry.CloseEvent
	peak int
}

func (cs *closingSet) add(id string, n uint64, ev Event) registry.CloseEvent {
	ce := registry.CloseEvent{N: n, Code: ev.Code, Reason: ev.Reason, By: ev.By}
	cs.mu.Lock()
	if cs.m == nil {
		cs.m = make(map[string]registry.CloseEvent)
	}
	cs.m[id] = ce
	cs.peak = max(cs.peak, len(cs.m))
	cs.mu.Unlock()
	return ce
}

func (cs *closingSet) remove(id string) {
	cs.mu.Lock()
	delete(cs.m, id)
	if len(cs.m) == 0 && cs.peak > 4096 {
		// Go maps do not shrink: let an outage's backlog go.
		cs.m, cs.peak = nil, 0
	}
	cs.mu.Unlock()
}

func (cs *closingSet) snapshot() map[string]registry.CloseEvent {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := make(map[string]registry.CloseEvent, len(cs.m))
	for id, ev := range cs.m {
		out[id] = ev
	}
	return out
}

func (cs *closingSet) len() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return len(cs.m)
}

// Undelivered returns the close events not delivered to the app, by
// connection id, with the number (the event id's n) each was given. Called
// after Wait gave up, it is what this node could not deliver: with Redis
// the sidecar leaves these in the node's record for a surviving node.
func (c *Client) Undelivered() map[string]registry.CloseEvent { return c.closing.snapshot() }
