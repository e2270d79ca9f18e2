package admin

import "github.com/cablecar/cablecar/pubsub"

// publishAnswer is /publish's answer (SPEC §4, §10): {"published": N},
// and with history on, "positions": each message's "<epoch>:<offset>" in
// request order, or null for one whose channel keeps no history.
func publishAnswer(b Broadcaster, msgs []pubsub.Message) any {
	if pb, ok := b.(pubsub.Broker); !ok || pubsub.HistoryOf(pb) == nil {
		return map[string]int{"published": len(msgs)}
	}
	positions := make([]*string, len(msgs))
	for i := range msgs {
		if p := pubsub.PositionOf(&msgs[i]); !p.IsZero() {
			s := p.String()
			positions[i] = &s
		}
	}
	return struct {
		Published int       `json:"published"`
		Positions []*string `json:"positions"`
	}{len(msgs), positions}
}
