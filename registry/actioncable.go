package registry

import "slices"

// UpdateIdentifiers records the subscriptions an ActionCable connection
// holds (all of them), for its close event should this node be lost.
func (r *Registry) UpdateIdentifiers(id string, identifiers []string) {
	identifiers = slices.Clone(identifiers)
	r.mu.Lock()
	if e, ok := r.live[id]; ok && !r.closed {
		e.rec.Identifiers = identifiers
		r.markLocked(id)
	}
	r.mu.Unlock()
}
