package e2e

import (
	"strconv"
	"testing"
)

// Cablecar runs its collector at GOGC=50 unless GOGC is set, which still
// decides (main.go; docs/configuration.md). The goal is read back from the
// Go collector's go_gc_gogc_percent.
func TestGCGoal(t *testing.T) {
	upstream := "http://127.0.0.1:" + strconv.Itoa(FreePort(t)) // nothing is asked of it
	for _, tc := range []struct {
		env  string
		want float64
	}{
		{"GOGC=", 50}, // unset (empty is unset to the runtime too), whatever this process has
		{"GOGC=80", 80},
	} {
		c := StartCablecar(t, CablecarOptions{Upstream: upstream, Env: []string{tc.env}})
		if got := c.Metric("go_gc_gogc_percent"); got != tc.want {
			t.Errorf("with %s: go_gc_gogc_percent %v, want %v", tc.env, got, tc.want)
		}
	}
}
