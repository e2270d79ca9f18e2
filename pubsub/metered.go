package pubsub

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metered counts what passes through a broker, whichever it is.
type metered struct {
	Broker
	published *prometheus.CounterVec // outcome: ok, error
	commands  *prometheus.CounterVec // kind, outcome: ok, no_connection, error
	delivered prometheus.Counter
}

// Metered wraps b so that publishes, commands and deliveries are counted
// on reg.
func Metered(b Broker, reg prometheus.Registerer) Broker {
	m := &metered{
		Broker: b,
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cablecar_broker_published_total",
			Help: "Messages published through the broker, by outcome.",
		}, []string{"outcome"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cablecar_broker_commands_total",
			Help: "Send and close commands to one connection, by kind and outcome.",
		}, []string{"kind", "outcome"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cablecar_broker_delivered_total",
			Help: "Messages the broker delivered to this node for fan-out.",
		}),
	}
	reg.MustRegister(m.published, m.commands, m.delivered)
	m.published.WithLabelValues("ok")
	return m
}

func (m *metered) Start(ctx context.Context, sink Sink) error {
	return m.Broker.Start(ctx, countingSink{sink, m.delivered})
}

func (m *metered) Publish(ctx context.Context, msgs ...Message) error {
	err := m.Broker.Publish(ctx, msgs...)
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.published.WithLabelValues(outcome).Add(float64(len(msgs)))
	return err
}

func (m *metered) Direct(ctx context.Context, cmd Command) error {
	err := m.Broker.Direct(ctx, cmd)
	kind := "send"
	if cmd.Kind == CommandClose {
		kind = "close"
	}
	outcome := "ok"
	switch {
	case errors.Is(err, ErrNoConnection):
		outcome = "no_connection"
	case err != nil:
		outcome = "error"
	}
	m.commands.WithLabelValues(kind, outcome).Inc()
	return err
}

type countingSink struct {
	Sink
	n prometheus.Counter
}

func (s countingSink) Deliver(msg Message) {
	s.n.Inc()
	s.Sink.Deliver(msg)
}
