package upgrade

import (
	"github.com/cablecar/cablecar/actioncable"
)

// acAccepted makes c an ActionCable connection when its accept chose an
// ActionCable subprotocol Cablecar speaks: its welcome is its first frame,
// and Cablecar-Subscribe is ignored (streams belong to subscriptions).
func (s *Server) acAccepted(c *Conn, acc *acceptance) {
	p, ok := acProtocol(acc.protocol)
	if !ok {
		return
	}
	c.ac = newACConn(p)
	if len(acc.subscribe) > 0 {
		c.log.Warn().Strs("channels", acc.subscribe).
			Msg("Cablecar-Subscribe ignored on an ActionCable connection: streams belong to subscriptions")
		acc.subscribe = nil
	}
	c.acSend(actioncable.AppendWelcome(nil, s.acNewSession(c, p)))
}
