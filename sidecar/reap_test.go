package sidecar

import (
	"testing"

	"github.com/cablecar/cablecar/registry"
)

// A lost connection whose app wanted no close event was recorded only to
// be found: it is settled at once, with nothing posted (s.cb is nil here,
// so posting would panic).
func TestPostLostSettlesNoClose(t *testing.T) {
	var s Sidecar
	settled := 0
	if !s.postLost("nodeAAAA", registry.ConnRecord{ID: "c_nodeAAAAxxxx", NoClose: true}, nil, func() { settled++ }) {
		t.Fatal("postLost refused a record that needs no posting")
	}
	if settled != 1 {
		t.Fatalf("settled %d times, want once", settled)
	}
}
