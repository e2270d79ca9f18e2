package upgrade

import (
	"sync/atomic"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/actioncable"
	"github.com/cablecar/cablecar/pubsub"
)

// The hub's side of ActionCable: the protocol pings from the shared
// ticker, broadcasts turned into one frame per (stream, identifier), and
// the refusal form of a refused handshake.

// hubAC is what the hub keeps for its ActionCable connections.
type hubAC struct {
	every    time.Duration
	lane     *actioncable.FastLane
	metrics  *acMetrics
	nextPing time.Time // the heartbeat goroutine's own
	// live counts the hub's ActionCable connections, so that a node
	// without any spends nothing on them per broadcast.
	live atomic.Int64
}

// counted adds d to the count of ActionCable connections if c is one.
func (a *hubAC) counted(c *Conn, d int64) {
	if a != nil && c.ac != nil {
		a.live.Add(d)
	}
}

// any says whether the hub has ActionCable connections.
func (a *hubAC) any() bool { return a != nil && a.live.Load() > 0 }

func newHubAC(cfg ActionCableConfig, reg prometheus.Registerer) *hubAC {
	every := cfg.PingInterval
	if every <= 0 {
		every = 3 * time.Second
	}
	return &hubAC{
		every:   every,
		lane:    actioncable.NewFastLane(cfg.TurboStreamsSecret, cfg.PublicStreams),
		metrics: newACMetrics(reg),
	}
}

// ping is the protocol ping frame when one is due on this tick, else nil:
// every ActionCable connection gets the same frame on the same tick, so it
// is built once.
func (a *hubAC) ping(now time.Time) []byte {
	if a == nil || now.Before(a.nextPing) {
		return nil
	}
	if a.nextPing.IsZero() {
		a.nextPing = now
	}
	for !a.nextPing.After(now) {
		a.nextPing = a.nextPing.Add(a.every)
	}
	return actioncable.AppendPing(nil, now.Unix())
}

// pingFrame is ping's frame with its WebSocket header, built once for
// every connection, or nil.
func (a *hubAC) pingFrame(now time.Time) []byte {
	if p := a.ping(now); p != nil {
		return newFrame(false, p)
	}
	return nil
}

// acPing sends the protocol ping (pingFrame's) to an ActionCable
// connection that is up and not closing: written by the heartbeat itself
// when the socket takes it at once, so that a ping round starts no writer
// goroutine per connection.
func (c *Conn) acPing(frame []byte) {
	if c.ac == nil || c.ws.Load() == nil || c.closeBy.Load() != 0 {
		return
	}
	c.deliver(outgoing{frame: frame, size: len(frame)})
}

// acRefuse completes a refused handshake in ActionCable's way when the
// client offered only ActionCable subprotocols and one Cablecar speaks
// (SPEC §9): 101 naming it, a disconnect with reconnect false, a close —
// so that @rails/actioncable stops retrying. It reports whether it did;
// if not, the caller refuses as usual.
func (s *Server) acRefuse(ctx *fasthttp.RequestCtx, reason string, log *zerolog.Event) bool {
	p, ok := actioncable.RefusalProtocol(headerValues(&ctx.Request.Header, "Sec-WebSocket-Protocol"), true)
	if !ok {
		return false
	}
	ctx.Response.Reset()
	ctx.Response.Header.Set("Sec-WebSocket-Protocol", p.String())
	wait := s.cfg.CloseTimeout
	err := s.upgrader.Upgrade(ctx, func(ws *websocket.Conn) {
		deadline := time.Now().Add(wait)
		_ = ws.SetWriteDeadline(deadline)
		if ws.WriteMessage(websocket.TextMessage, actioncable.AppendDisconnect(nil, reason, false)) != nil {
			return
		}
		msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, reason)
		if ws.WriteControl(websocket.CloseMessage, msg, deadline) != nil {
			return
		}
		// The client's close frame, or the deadline: then the server
		// closes the socket.
		_ = ws.SetReadDeadline(deadline)
		for {
			if _, _, err := ws.NextReader(); err != nil {
				return
			}
		}
	})
	if err != nil {
		return false
	}
	s.metrics.upgrades.WithLabelValues("rejected", "actioncable_"+reason).Inc()
	log.Str("reason", reason).Msg("websocket refused with an ActionCable disconnect")
	return true
}

// acSendCommand carries out an admin /send with an identifier: to that
// subscription, as {"identifier":I,"message":data}. It reports whether it
// took the command; a send without one goes verbatim.
func (c *Conn) acSendCommand(cmd pubsub.Command) bool {
	if cmd.Identifier == "" {
		return false
	}
	if c.ac == nil || !c.acSubscribed(cmd.Identifier) {
		c.log.Debug().Str("identifier", cmd.Identifier).Msg("admin send to a subscription this connection does not hold: dropped")
		return true
	}
	c.acSend(actioncable.AppendMessage(nil, cmd.Identifier, cmd.Data, actioncable.IsJSON(cmd.Data)))
	return true
}
