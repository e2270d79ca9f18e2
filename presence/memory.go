package presence

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"
)

// Memory is the store of one node (the in-memory broker): this node's
// holdings are the cluster's.
type Memory struct {
	mu     sync.Mutex
	chans  map[string]*memChannel
	newID  func() string
	nowFor func() time.Time
}

type memChannel struct {
	conns int
	ids   map[string]Hold
}

var _ Store = (*Memory)(nil)

// NewMemory builds an empty store.
func NewMemory() *Memory {
	return &Memory{chans: map[string]*memChannel{}, newID: NewEventID, nowFor: time.Now}
}

// Apply implements Store.
func (m *Memory) Apply(_ context.Context, holds []Hold, counts []Count) ([]Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var events []Event
	at := m.nowFor().UnixMilli()
	for _, h := range holds {
		ch := m.chans[h.Channel]
		_, had := ch.get(h.ID)
		switch {
		case h.Gone && had:
			old := ch.ids[h.ID]
			delete(ch.ids, h.ID)
			if !h.Quiet {
				events = append(events, Event{ID: m.newID(), Type: Leave, Channel: h.Channel, Who: h.ID, Info: old.Info, At: at})
			}
		case !h.Gone:
			if ch == nil {
				ch = &memChannel{}
				m.chans[h.Channel] = ch
			}
			if ch.ids == nil {
				ch.ids = map[string]Hold{}
			}
			ch.ids[h.ID] = h
			if !had && !h.Quiet {
				events = append(events, Event{ID: m.newID(), Type: Join, Channel: h.Channel, Who: h.ID, Info: h.Info, At: at})
			}
		}
		m.forgetEmpty(h.Channel)
	}
	for _, c := range counts {
		ch := m.chans[c.Channel]
		if ch == nil {
			if c.Conns == 0 {
				continue
			}
			ch = &memChannel{}
			m.chans[c.Channel] = ch
		}
		ch.conns = c.Conns
		m.forgetEmpty(c.Channel)
	}
	return events, nil
}

func (ch *memChannel) get(id string) (Hold, bool) {
	if ch == nil {
		return Hold{}, false
	}
	h, ok := ch.ids[id]
	return h, ok
}

func (m *Memory) forgetEmpty(name string) {
	if ch := m.chans[name]; ch != nil && ch.conns == 0 && len(ch.ids) == 0 {
		delete(m.chans, name)
	}
}

// Read implements Store.
func (m *Memory) Read(_ context.Context, channel string) (Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Snapshot{Channel: channel, Members: []Member{}}
	ch := m.chans[channel]
	if ch == nil {
		return s, nil
	}
	s.Connections = ch.conns
	for id, h := range ch.ids {
		s.Members = append(s.Members, Member{ID: id, Info: h.Info, Connections: h.Conns})
	}
	sortMembers(s.Members)
	return s, nil
}

func sortMembers(ms []Member) {
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
}
