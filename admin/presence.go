package admin

import (
	"context"
	"net/http"

	"github.com/cablecar/cablecar/pubsub"
)

// PresenceReader reads a channel's presence (SPEC §11): what GET
// /presence answers, encoded as it is ({"channel","connections","members"}).
type PresenceReader func(ctx context.Context, channel string) (any, error)

// EnablePresence serves GET /presence?channel=<name> through read, with
// the API's key. Call it after EnableAPI, before Serve.
func (s *Server) EnablePresence(read PresenceReader) {
	a := s.api
	s.mux.Handle("GET /presence", a.get(func(ctx context.Context, r *http.Request) (any, error) {
		ch := r.URL.Query().Get("channel")
		if err := pubsub.ValidateChannel(ch); err != nil {
			return nil, badRequest("channel: %v", err)
		}
		return read(ctx, ch)
	}))
}
