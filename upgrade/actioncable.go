package upgrade

import (
	"context"
	"slices"
	"sync"
	"time"
	"unique"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cablecar/cablecar/actioncable"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/session"
)

// ActionCable connections (SPEC §9): those whose accept chose
// actioncable-v1-json. Cablecar speaks the protocol on them — welcome,
// pings, confirmations, messages per subscription, a disconnect before
// every close — and turns the client's commands into events.
//
// Subscriptions are per (connection, identifier), streams per
// subscription. The hub's membership stays per channel → connections: a
// connection is a member of channel S while one of its subscriptions
// streams S (or a reply's plain subscribe asked for S), and the
// connection keeps, per stream, the identifiers that stream it, so that a
// broadcast to S becomes one frame per identifier (actioncable_fanout.go).

// ActionCableConfig is the actioncable section (SPEC §7, §9).
type ActionCableConfig struct {
	PingInterval       time.Duration // the protocol's ping; 0 = 3s
	TurboStreamsSecret string        // the Turbo fast lane's key; "" = off
	PublicStreams      bool          // $pubsub public streams confirmed by Cablecar
	// Sessions keeps ext sessions for restore (SPEC §10, session.go);
	// nil = restore off (session_ttl 0). SessionTTL is session_ttl.
	Sessions   session.Store
	SessionTTL time.Duration
}

// acConn is an ActionCable connection's protocol state.
type acConn struct {
	proto actioncable.Protocol

	// opMu orders the changes of subscriptions and streams, the hub joins
	// and leaves they make included, which happen outside mu: the read
	// loop (commands) and the event stream (replies) both make them, and a
	// leave overtaking the join it follows would leave a member behind.
	opMu sync.Mutex
	// mu guards subs and plain; deliveries read them. A connection holds
	// a handful of subscriptions: slices scanned by pointer comparisons
	// (names are interned) cost less to read per delivery, and to keep
	// per idle connection, than maps.
	mu    sync.RWMutex
	subs  []*acSub // in the order subscribed
	plain []atom   // channels a reply's subscribe joined: delivered verbatim

	// The disconnect frame the next close gives, when its closer knows
	// better than its "by" (an app's close reply, admin /close). Guarded
	// by the Conn's mu.
	disc *acDisconnect

	hist *acHist // ext connections' history (actioncable_history.go); nil on others
	// sess is an ext connection's session (session.go); nil otherwise.
	sess *acSession
}

type acSub struct {
	id       atom
	state    string
	hasState bool
	streams  []atom
}

// atom is an identifier or a stream name, interned: every connection with
// the same one shares its bytes (a Turbo page's thousands of viewers hold
// one identifier), and two atoms are equal when their pointers are.
type atom = unique.Handle[string]

func intern(s string) atom { return unique.Make(s) }

// sub is identifier id's subscription, or nil. The caller holds mu.
func (ac *acConn) sub(id atom) *acSub {
	for _, s := range ac.subs {
		if s.id == id {
			return s
		}
	}
	return nil
}

// streamed says whether a subscription streams stream. The caller holds
// mu.
func (ac *acConn) streamed(stream atom) bool {
	for _, s := range ac.subs {
		if slices.Contains(s.streams, stream) {
			return true
		}
	}
	return false
}

// streamIDs appends to dst the identifiers streaming stream, in the order
// subscribed. The caller holds mu.
func (ac *acConn) streamIDs(dst []atom, stream atom) []atom {
	for _, s := range ac.subs {
		if slices.Contains(s.streams, stream) {
			dst = append(dst, s.id)
		}
	}
	return dst
}

// atomStrings are the strings of ns.
func atomStrings(ns []atom) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.Value()
	}
	return out
}

type acDisconnect struct {
	reason    string
	reconnect bool
}

func newACConn(p actioncable.Protocol) *acConn {
	ac := &acConn{proto: p}
	if p == actioncable.Ext {
		ac.hist = &acHist{}
	}
	return ac
}

// acMetrics count what ActionCable clients send that is not carried out.
type acMetrics struct {
	malformed *prometheus.CounterVec // reason
	sessions  *prometheus.CounterVec // outcome (session.go)
}

func newACMetrics(reg prometheus.Registerer) *acMetrics {
	m := &acMetrics{malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cablecar_actioncable_malformed_commands_total",
		Help: "ActionCable commands ignored, by reason (not_json, unknown_command, bad_identifier, bad_data, not_subscribed, already_subscribed…).",
	}, []string{"reason"})}
	m.sessions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cablecar_actioncable_sessions_total",
		Help: "ActionCable ext sessions (SPEC §10), by outcome: held (a close waits for a restore), restored, not_found (a sid that restores nothing), other_sub.",
	}, []string{"outcome"})
	reg.MustRegister(m.malformed, m.sessions)
	return m
}

// acProtocol says whether an accept's chosen subprotocol makes the
// connection an ActionCable one.
func acProtocol(chosen string) (actioncable.Protocol, bool) {
	// The ext protocol: history (§10, actioncable_history.go).
	return actioncable.ParseProtocol(chosen, true)
}

// send queues a frame of this connection alone.
//
// Like a broadcast, it is written at once by the caller when the socket
// takes it and nothing waits ahead of it (Conn.deliver): a welcome or a
// confirmation then starts no writer goroutine, whose stack a burst of
// subscribes would otherwise leave in the node's memory.
func (c *Conn) acSend(frame []byte) {
	c.deliver(outgoing{frame: newFrame(false, frame), size: len(frame)})
}

// acCommand handles one frame from an ActionCable client. A malformed
// command is counted and ignored, as ActionCable does.
func (c *Conn) acCommand(data []byte, binary bool) {
	// On a goroutine of its own, waited for: what a command runs through
	// (JSON, the fast lane's HMAC, a join) grows a stack past the size a
	// read loop parked in its read keeps, and Go never gives a parked
	// read loop's grown stack back. The command's goroutine ends, and its
	// stack with it; the read loop stays at its size.
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.acRunCommand(data, binary)
	}()
	<-done
}

// acRunCommand is acCommand on the command's goroutine.
func (c *Conn) acRunCommand(data []byte, binary bool) {
	if binary {
		c.acMalformed(actioncable.NotJSON.String())
		return
	}
	cmd, err := actioncable.ParseCommand(data)
	if err != nil {
		why := "not_json"
		if pe, ok := err.(*actioncable.ParseError); ok {
			why = pe.Why.String()
		}
		c.log.Debug().Err(err).Msg("actioncable: command ignored")
		c.acMalformed(why)
		return
	}
	ac := c.ac
	switch cmd.Kind {
	case actioncable.Subscribe:
		if c.acSubscribed(cmd.Identifier) {
			// ActionCable logs "Already subscribed" and goes on.
			c.acMalformed("already_subscribed")
			return
		}
		c.acHistoryOnSubscribe(cmd.Identifier, cmd.History) // ext: answered once confirmed
		if v := c.hub.ac.lane.Decide(cmd.Identifier); v.Lane != actioncable.ToApp {
			c.acFastLane(cmd.Identifier, v)
			return
		}
		ac.opMu.Lock()
		c.acAddSub(cmd.Identifier)
		ac.opMu.Unlock()
		c.acPush(callback.Event{Type: callback.EventSubscribe, Identifier: cmd.Identifier})
	case actioncable.Message:
		if !c.acSubscribed(cmd.Identifier) {
			c.acMalformed(actioncable.NotSubscribed.String())
			return
		}
		c.acPush(callback.Event{Type: callback.EventPerform, Identifier: cmd.Identifier, Data: []byte(cmd.Data)})
		return
	case actioncable.Unsubscribe:
		if !c.acSubscribed(cmd.Identifier) {
			c.acMalformed(actioncable.NotSubscribed.String())
			return
		}
		ac.opMu.Lock()
		state, hasState := c.acDropSub(cmd.Identifier)
		ac.opMu.Unlock()
		// The state goes with the event: the subscription is gone by the
		// time its request is built, and the app's unsubscribed needs it.
		c.acPush(callback.Event{Type: callback.EventUnsubscribe, Identifier: cmd.Identifier, State: state, HasState: hasState})
	case actioncable.History:
		c.acHistoryCommand(cmd.Identifier, cmd.History)
	case actioncable.Pong:
		// Liveness only (SPEC §10): the read loop noted the frame.
		return
	default:
		if c.acPresenceCommand(cmd) { // actioncable_presence.go
			return
		}
		c.acMalformed(actioncable.UnknownCommand.String())
		return
	}
	c.acSessionChanged()
}

func (c *Conn) acMalformed(why string) {
	c.hub.ac.metrics.malformed.WithLabelValues(why).Inc()
}

// acPush queues a command's event, when the app asked for them
// (Cablecar-Events' message covers the commands).
func (c *Conn) acPush(ev callback.Event) {
	if !c.events.has(eventMessage) {
		return
	}
	c.paused.Store(true)
	c.stream.Push(ev)
	c.paused.Store(false)
	c.lastSeen.Store(time.Now().UnixNano())
}

// acFastLane answers a subscribe the Turbo fast lane decided.
func (c *Conn) acFastLane(id string, v actioncable.Verdict) {
	if v.Lane == actioncable.Reject {
		c.log.Debug().AnErr("why", v.Err).Msg("actioncable: signed stream rejected")
		c.acSend(actioncable.AppendAck(nil, actioncable.RejectSubscription, id))
		c.acRejected(id)
		return
	}
	c.ac.opMu.Lock()
	c.acAddSub(id)
	c.acStream(id, v.Stream)
	c.ac.opMu.Unlock()
	c.acSessionChanged()
	c.acSend(actioncable.AppendAck(nil, actioncable.ConfirmSubscription, id))
	c.acConfirmed(id)
}

func (c *Conn) acSubscribed(id string) bool {
	c.ac.mu.RLock()
	ok := c.ac.sub(intern(id)) != nil
	c.ac.mu.RUnlock()
	return ok
}

// acAddSub records a subscription. The caller holds opMu.
func (c *Conn) acAddSub(id string) {
	ac := c.ac
	n := intern(id)
	ac.mu.Lock()
	if ac.sub(n) == nil {
		ac.subs = append(ac.subs, &acSub{id: n})
	}
	ac.mu.Unlock()
	c.acTracked()
}

// acDropSub ends a subscription and its streams. The caller holds opMu.
func (c *Conn) acDropSub(id string) (state string, hasState bool) {
	ac := c.ac
	n := intern(id)
	ac.mu.Lock()
	i := slices.IndexFunc(ac.subs, func(s *acSub) bool { return s.id == n })
	if i < 0 {
		ac.mu.Unlock()
		return "", false
	}
	sub := ac.subs[i]
	state, hasState = sub.state, sub.hasState
	ac.subs = slices.Delete(ac.subs, i, i+1)
	left := ac.unstreamLocked(sub, sub.streams)
	ac.mu.Unlock()
	c.unsubscribe(left...)
	c.acTracked()
	return state, hasState
}

// acStream makes subscription id stream from stream, joining its channel
// when it is the connection's first reason to. The caller holds opMu.
func (c *Conn) acStream(id, stream string) {
	ac := c.ac
	sn := intern(stream)
	ac.mu.Lock()
	sub := ac.sub(intern(id))
	if sub == nil || slices.Contains(sub.streams, sn) {
		ac.mu.Unlock()
		if sub == nil {
			c.log.Debug().Str("identifier", id).Msg("actioncable: stream for an identifier not subscribed: ignored")
		}
		return
	}
	first := !ac.streamed(sn) && !slices.Contains(ac.plain, sn)
	sub.streams = append(sub.streams, sn)
	ac.mu.Unlock()
	stream = sn.Value()        // the hub's channel shares the interned bytes
	c.acHoldStream(id, stream) // ext: held until the subscribe's history is answered
	if first {
		if err := c.subscribe(stream); err != nil {
			c.log.Warn().Err(err).Str("stream", stream).Msg("actioncable: streaming failed")
		}
	}
}

// acStopStream stops one stream of id, or all of them (stream ""). The
// caller holds opMu.
func (c *Conn) acStopStream(id, stream string) {
	ac := c.ac
	ac.mu.Lock()
	sub := ac.sub(intern(id))
	if sub == nil {
		ac.mu.Unlock()
		return
	}
	stop := sub.streams
	if stream != "" {
		sn := intern(stream)
		if !slices.Contains(sub.streams, sn) {
			ac.mu.Unlock()
			return
		}
		stop = []atom{sn}
	}
	left := ac.unstreamLocked(sub, stop)
	ac.mu.Unlock()
	c.unsubscribe(left...)
}

// unstreamLocked takes streams off sub and returns the channels the
// connection no longer has a reason to be in. sub may be one just taken
// out of subs (acDropSub): only the others then count.
func (ac *acConn) unstreamLocked(sub *acSub, streams []atom) []string {
	var left []string
	for _, s := range slices.Clone(streams) {
		if i := slices.Index(sub.streams, s); i >= 0 {
			sub.streams = slices.Delete(sub.streams, i, i+1)
		}
		if !ac.streamed(s) && !slices.Contains(ac.plain, s) {
			left = append(left, s.Value())
		}
	}
	return left
}

// acPlain joins or leaves channels a reply's subscribe or unsubscribe
// names, delivered verbatim, minding the streams of the same names. The
// caller holds opMu.
func (c *Conn) acPlain(subscribe, unsubscribe []string) {
	ac := c.ac
	var join, leave []string
	ac.mu.Lock()
	for _, ch := range unsubscribe {
		n := intern(ch)
		if i := slices.Index(ac.plain, n); i >= 0 {
			ac.plain = slices.Delete(ac.plain, i, i+1)
			if !ac.streamed(n) {
				leave = append(leave, n.Value())
			}
		}
	}
	for _, ch := range subscribe {
		n := intern(ch)
		if slices.Contains(ac.plain, n) {
			continue
		}
		ac.plain = append(ac.plain, n)
		if !ac.streamed(n) {
			join = append(join, n.Value())
		}
	}
	ac.mu.Unlock()
	c.unsubscribe(leave...)
	if err := c.subscribe(join...); err != nil {
		c.log.Warn().Err(err).Msg("subscribe from the app's reply failed")
	}
}

// acIdentifiers are the subscriptions held, for the close event and the
// registry; nil on other connections.
func (c *Conn) acIdentifiers() []string {
	if c.ac == nil {
		return nil
	}
	c.ac.mu.RLock()
	defer c.ac.mu.RUnlock()
	out := make([]string, len(c.ac.subs))
	for i, s := range c.ac.subs {
		out[i] = s.id.Value()
	}
	return out
}

// acStates are the channel_state of each subscription that has one.
func (c *Conn) acStates() map[string]string {
	if c.ac == nil {
		return nil
	}
	c.ac.mu.RLock()
	defer c.ac.mu.RUnlock()
	var out map[string]string
	for _, sub := range c.ac.subs {
		if sub.hasState {
			if out == nil {
				out = make(map[string]string, len(c.ac.subs))
			}
			out[sub.id.Value()] = sub.state
		}
	}
	return out
}

// identifierTracker is a Tracker that also records an ActionCable
// connection's identifiers (registry.Registry), so that a survivor's
// node_lost close event lists them.
type identifierTracker interface {
	UpdateIdentifiers(id string, identifiers []string)
}

func (c *Conn) acTracked() {
	t, ok := c.hub.cfg.Tracker.(identifierTracker)
	if !ok || c.ws.Load() == nil {
		return
	}
	t.UpdateIdentifiers(c.id, c.acIdentifiers())
}

// acApply carries out a reply to an ActionCable connection: state and
// channel_state first (the events that follow carry them), then plain
// unsubscribe and subscribe, stop_stream and stream (joined before any
// confirm goes out, so that what is published after the client saw its
// confirmation reaches it), reject, confirm, transmit, send, publish,
// close.
func (c *Conn) acApply(r *callback.Reply) {
	ac := c.ac
	if r.State != nil {
		c.mu.Lock()
		c.state = *r.State
		c.trackedLocked()
		c.mu.Unlock()
	}
	x := r.ActionCable
	if x == nil {
		x = &callback.ACReply{}
	}
	if len(x.ChannelState) > 0 {
		ac.mu.Lock()
		for id, st := range x.ChannelState {
			if sub := ac.sub(intern(id)); sub != nil {
				sub.state, sub.hasState = st, true
			}
		}
		ac.mu.Unlock()
	}
	ac.opMu.Lock()
	if len(r.Subscribe) > 0 || len(r.Unsubscribe) > 0 {
		c.acPlain(r.Subscribe, r.Unsubscribe)
	}
	for _, s := range x.StopStream {
		c.acStopStream(s.Identifier, s.Stream)
	}
	for _, s := range x.Stream {
		c.acStream(s.Identifier, s.Stream)
	}
	for _, id := range x.Reject {
		c.acDropSub(id)
	}
	ac.opMu.Unlock()
	for _, id := range x.Reject {
		c.acSend(actioncable.AppendAck(nil, actioncable.RejectSubscription, id))
		c.acRejected(id)
	}
	for _, id := range x.Confirm {
		if c.acSubscribed(id) {
			c.acSend(actioncable.AppendAck(nil, actioncable.ConfirmSubscription, id))
			c.acConfirmed(id)
		} else {
			c.log.Debug().Str("identifier", id).Msg("actioncable: confirm for an identifier not subscribed: ignored")
		}
	}
	for _, t := range x.Transmit {
		c.acSend(actioncable.AppendMessage(nil, t.Identifier, t.Message, true))
	}
	for _, f := range r.Send {
		c.enqueue(outgoing{data: f.Data, binary: f.Binary, size: len(f.Data)})
	}
	c.presenceApply(r.Presence)
	if msgs := r.Messages(c.id); len(msgs) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), c.hub.cfg.BrokerTimeout)
		if err := c.hub.broker.Publish(ctx, msgs...); err != nil {
			c.log.Warn().Err(err).Msg("publish from the app's reply failed")
		}
		cancel()
	}
	c.acSessionChanged()
	if cl := r.Close; cl != nil {
		c.acSetDisconnect(cl.Reason, !cl.NoReconnect)
		c.closeWith(cl.Code, cl.Reason, ByApp)
	}
}

// acSetDisconnect sets the disconnect frame of the close about to be
// made, unless the end is decided already.
func (c *Conn) acSetDisconnect(reason string, reconnect bool) {
	if c.ac == nil {
		return
	}
	c.mu.Lock()
	if c.end == nil {
		c.ac.disc = &acDisconnect{reason: reason, reconnect: reconnect}
	}
	c.mu.Unlock()
}

// acDisconnectLocked queues the disconnect frame of a close Cablecar
// makes, after what is queued and before the close frame, past the
// queue's bounds (it is the last frame). The caller holds c.mu.
func (c *Conn) acDisconnectLocked(by string) {
	d := c.ac.disc
	if d == nil && c.acKeepsSession(by) {
		// @anycable/web forgets its sid on a disconnect (SPEC §9).
		return
	}
	if d == nil {
		d = &acDisconnect{reason: by, reconnect: true}
		switch by {
		case ByExpired:
			d = &acDisconnect{reason: actioncable.ReasonTokenExpired}
		case ByShutdown, ByNodeLost:
			d.reason = actioncable.ReasonServerRestart
		}
	}
	frame := actioncable.AppendDisconnect(nil, d.reason, d.reconnect)
	c.queue = append(c.queue, outgoing{data: frame, size: len(frame)})
	c.queued.Add(int64(len(frame)))
}
