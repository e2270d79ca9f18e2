package upgrade

import "slices"

// Lookup reports whether connection id is open on this node — accepted
// (its 101 written) and not closing — and the channels it is subscribed
// to (the admin API's GET /connections/<id>).
func (h *Hub) Lookup(id string) (channels []string, ok bool) {
	c := h.get(id)
	if c == nil || c.ws.Load() == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.end != nil || c.torn {
		return nil, false
	}
	return slices.Clone(c.channels), true
}
