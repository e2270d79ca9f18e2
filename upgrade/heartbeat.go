package upgrade

import (
	"math/rand/v2"

	"github.com/fasthttp/websocket"
)

// heartbeat is the hub ticker's visit: ping when due, close a connection
// that has been silent too long, cut a close handshake that takes too long.
func (c *Conn) heartbeat(now int64) {
	cfg := &c.hub.cfg
	if c.ws.Load() == nil {
		// Accepted but the 101 was never written (the client left): nothing
		// will ever run this connection's read loop.
		if now-c.createdAt > int64(cfg.HandshakeTimeout) {
			c.abandon()
		}
		return
	}
	if by := c.closeBy.Load(); by != 0 {
		if now > by {
			c.cut()
		}
		return
	}
	if c.expires != 0 && now > c.expires {
		c.closeWith(websocket.ClosePolicyViolation, "token expired", ByExpired)
		return
	}
	if c.paused.Load() {
		return
	}
	if now-c.lastSeen.Load() > int64(cfg.PongTimeout) {
		c.closeWith(websocket.CloseGoingAway, "no pong", ByTimeout)
		// A silent client will not answer the close frame either.
		c.closeBy.Store(now)
		return
	}
	if c.nextPing == 0 {
		// Spread the pings of connections made in the same instant over
		// the interval rather than sending them all on one tick.
		c.nextPing = now + rand.Int64N(int64(cfg.PingInterval))
	}
	if now >= c.nextPing {
		c.nextPing = now + int64(cfg.PingInterval)
		c.queuePing()
	}
}
