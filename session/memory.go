package session

import (
	"context"
	"sync"
	"time"
)

// Memory is the store of one node without Redis. Live sessions cost a
// map entry and the connection's own snapshot function: nothing is copied
// until a restore asks.
type Memory struct {
	ttl time.Duration

	mu      sync.Mutex
	bySID   map[string]string    // sid hash → connection id
	entries map[string]*memEntry // connection id → its session
}

type memEntry struct {
	sid  string // hash
	snap Snapshot
	held *Session // the session as it ended; nil while live
	// posting: its close was handed to the poster; no restore now.
	posting bool
}

// NewMemory returns a store whose sessions wait ttl after their connection ended.
func NewMemory(ttl time.Duration) *Memory {
	return &Memory{ttl: ttl, bySID: map[string]string{}, entries: map[string]*memEntry{}}
}

func (m *Memory) Durable() bool { return false }

func (m *Memory) Save(sid string, snap Snapshot) {
	h := Hash(sid)
	m.mu.Lock()
	defer m.mu.Unlock()
	if id, ok := m.bySID[h]; ok {
		m.entries[id].snap = snap
		return
	}
	s := snap()
	m.bySID[h] = s.ConnID
	m.entries[s.ConnID] = &memEntry{sid: h, snap: snap}
}

func (m *Memory) Hold(sid string, snap Snapshot, written func()) {
	h := Hash(sid)
	m.mu.Lock()
	if id, ok := m.bySID[h]; ok {
		e := m.entries[id]
		e.held = snap()
	}
	m.mu.Unlock()
	if written != nil {
		written()
	}
}

func (m *Memory) Drop(sid string) {
	h := Hash(sid)
	m.mu.Lock()
	if id, ok := m.bySID[h]; ok {
		delete(m.bySID, h)
		delete(m.entries, id)
	}
	m.mu.Unlock()
}

func (m *Memory) Take(_ context.Context, sid, sub string) (*Session, error) {
	h := Hash(sid)
	m.mu.Lock()
	defer m.mu.Unlock()
	id, ok := m.bySID[h]
	if !ok {
		return nil, nil
	}
	e := m.entries[id]
	if e.posting {
		return nil, nil
	}
	s := e.held
	if s == nil {
		s = e.snap()
	}
	if s.Sub != sub {
		return nil, ErrOtherSub
	}
	delete(m.bySID, h)
	delete(m.entries, id)
	return s, nil
}

func (m *Memory) Find(_ context.Context, connID string) (*Session, bool, error) {
	// Under the lock, as Take: Run's due marks the entry (posting).
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[connID]
	switch {
	case e == nil || e.posting:
		return nil, false, nil
	case e.held != nil:
		return e.held, true, nil
	}
	return e.snap(), false, nil
}

// Run looks for due closes a few times per session_ttl (at most every
// second, at least every 20 ms).
func (m *Memory) Run(ctx context.Context, post PostFunc) {
	t := time.NewTicker(pollEvery(m.ttl))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, s := range m.due(nowMs()) {
			id := s.ConnID
			post(s, func() { m.forget(id) })
		}
	}
}

func (m *Memory) due(now int64) []*Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Session
	for _, e := range m.entries {
		if e.held != nil && !e.posting && e.held.Close != nil && e.held.Close.Due <= now {
			e.posting = true
			delete(m.bySID, e.sid)
			out = append(out, e.held)
		}
	}
	return out
}

// TakeHeld hands over every held close at once, due or not: nothing
// outlives this process (shutdown).
func (m *Memory) TakeHeld() []*Session { return m.due(1<<62 - 1) }

func (m *Memory) forget(id string) {
	m.mu.Lock()
	delete(m.entries, id)
	m.mu.Unlock()
}

func (m *Memory) Flush(context.Context) error { return nil }

func pollEvery(ttl time.Duration) time.Duration {
	return min(max(ttl/20, 20*time.Millisecond), time.Second)
}

var _ Store = (*Memory)(nil)
