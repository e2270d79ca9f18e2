package callback

import (
	"testing"

	"github.com/cablecar/cablecar/config"
)

// The defaults of the callback.* keys are written twice: in config's tags
// (the source: sidecar.yaml and docs/configuration.md are checked against
// them, and the sidecar always passes every value) and here, for the zero
// values of a Config built without the sidecar. They must not drift.
func TestDefaultsMatchConfig(t *testing.T) {
	def := config.Default().Callback
	got := Config{}.withDefaults()
	for _, c := range []struct {
		key       string
		got, want any
	}{
		{"callback.timeout", got.Timeout, def.Timeout},
		{"callback.max_in_flight", got.MaxInFlight, def.MaxInFlight},
		{"callback.close_retry_for", got.CloseRetryFor, def.CloseRetryFor},
		{"callback.max_pending_closes", got.MaxPendingCloses, def.MaxPendingCloses},
	} {
		if c.got != c.want {
			t.Errorf("%s: the zero Config means %v, config's default is %v", c.key, c.got, c.want)
		}
	}
}
