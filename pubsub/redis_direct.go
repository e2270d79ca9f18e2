package pubsub

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sends and closes for one connection (admin /send and /close) go to the
// node its id names, over that node's channel <prefix>~node:<node>: one
// PUBLISH, and Redis's count of receivers says whether the node is there.
//
// A connection restored from its session (SPEC §10) keeps its id but may
// live on another node than the one the id names. Such commands still go
// first where the id points — the common case, a connection on its first
// node, costs nothing more — and only when that node does not hold the
// connection is the Locator asked where it lives now (the session store,
// whose record of a restored session names the node that restored it):
//
//   - Direct on the node the id names, or on any node when no node listens
//     on the id's node channel (that node is gone), asks at once and sends
//     the command on to the node that holds it now, or answers
//     ErrNoConnection when none does;
//   - a node that receives a command for one of its own ids that it no
//     longer holds (it lives, the connection moved) asks too, off the
//     subscriber's goroutine, and sends the command on. Its sender had
//     its answer already: a live node's channel took the command.
//
// A command is sent on at most once: a node forwards only commands for
// ids that name it, and a forwarded command names another, so a stale
// answer from the locator can never make two nodes pass a command back
// and forth.

// Locator says which node holds connection id now; ok is false when no
// node does (it ended, or waits to be restored), err when that cannot be
// known now.
type Locator func(ctx context.Context, id string) (node string, ok bool, err error)

const (
	// forwardQueue bounds the commands waiting to be sent on; more are
	// dropped (with a warning), as a command for a gone node would be.
	forwardQueue = 256
	// forwardTimeout bounds the lookup and the PUBLISH of one forward.
	forwardTimeout = 5 * time.Second
)

// Locate makes the broker find, through l, a connection that is not on
// the node its id names (a restored session's). Call it before Start.
// Without it, such a connection cannot be reached.
func (r *Redis) Locate(l Locator) {
	r.locate = l
	r.forwards = make(chan Command, forwardQueue)
}

// Direct sends a command to the node holding the connection: this one,
// the one its id names, else the one the locator names.
func (r *Redis) Direct(ctx context.Context, cmd Command) error {
	if cmd.Kind != CommandSend && cmd.Kind != CommandClose {
		return fmt.Errorf("pubsub: unknown command kind %d", cmd.Kind)
	}
	if err := r.usable(); err != nil {
		return err
	}
	node, ok := NodeOf(cmd.Connection)
	if !ok {
		return ErrNoConnection
	}
	// A connection on this node, under an id of its own or a restored
	// one's, skips Redis: a map lookup is all a miss costs.
	if r.sink.Execute(cmd) {
		return nil
	}
	if node != r.cfg.Node {
		taken, err := r.sendTo(ctx, node, &cmd)
		if err != nil || taken {
			// Taken: that node runs it, or sends it on (missed).
			return err
		}
	}
	return r.relocate(ctx, cmd, node)
}

// relocate sends cmd to the node the locator names, when it is neither
// tried (which does not hold the connection) nor gone.
func (r *Redis) relocate(ctx context.Context, cmd Command, tried string) error {
	if r.locate == nil {
		return ErrNoConnection
	}
	now, ok, err := r.locate(ctx, cmd.Connection)
	switch {
	case err != nil:
		return fmt.Errorf("finding the connection's node: %w", err)
	case !ok || now == tried:
		return ErrNoConnection
	case now == r.cfg.Node:
		if r.sink.Execute(cmd) {
			return nil
		}
		return ErrNoConnection
	}
	taken, err := r.sendTo(ctx, now, &cmd)
	if err != nil {
		return err
	}
	if !taken {
		return ErrNoConnection
	}
	return nil
}

// sendTo publishes cmd on node's channel and reports whether a node
// listens there.
func (r *Redis) sendTo(ctx context.Context, node string, cmd *Command) (bool, error) {
	pipe := r.rdb.Pipeline()
	n := r.publish(ctx, pipe, r.cfg.Prefix+nodeInfix+node, encodeCommand(cmd))
	if _, err := pipe.Exec(ctx); err != nil {
		return false, fmt.Errorf("publishing to Redis: %w", err)
	}
	return n.Val() > 0, nil
}

// missed handles a command that came on this node's channel for a
// connection this node does not hold: one whose id names this node may
// have been restored elsewhere, and is sent on from forwardLoop.
func (r *Redis) missed(cmd Command) {
	if node, _ := NodeOf(cmd.Connection); node != r.cfg.Node || r.locate == nil {
		r.log.Debug().Str("conn_id", cmd.Connection).Msg("command for a connection no longer here")
		return
	}
	select {
	case r.forwards <- cmd:
	default:
		r.log.Warn().Str("conn_id", cmd.Connection).Msg("too many commands to send on to restored connections; dropped one")
	}
}

// forwardLoop sends on, one at a time, the commands missed queued, until
// ctx ends.
func (r *Redis) forwardLoop(ctx context.Context) {
	for {
		var cmd Command
		select {
		case <-ctx.Done():
			return
		case cmd = <-r.forwards:
		}
		fctx, cancel := context.WithTimeout(ctx, forwardTimeout)
		err := r.relocate(fctx, cmd, r.cfg.Node)
		cancel()
		switch {
		case errors.Is(err, ErrNoConnection):
			r.log.Debug().Str("conn_id", cmd.Connection).Msg("command for a connection no longer here")
		case err != nil && ctx.Err() == nil:
			r.log.Warn().Err(err).Str("conn_id", cmd.Connection).Msg("a command for a restored connection could not be sent on")
		}
	}
}
