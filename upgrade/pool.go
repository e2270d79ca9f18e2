package upgrade

import "sync"

// websocketBufferPool lends write buffers to connections for the length of
// one message, so an idle connection holds none.
type websocketBufferPool struct{ p sync.Pool }

func (b *websocketBufferPool) Get() any  { return b.p.Get() }
func (b *websocketBufferPool) Put(v any) { b.p.Put(v) }
