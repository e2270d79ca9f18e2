package upgrade

import (
	"testing"

	"github.com/valyala/fasthttp"
)

// callback.forward_headers copies handshake headers onto every event
// request; a Cablecar header named there, in any spelling, is not one of
// them (SPEC §1): the accept request carries Cablecar's own Cablecar-Upgrade
// and signature, which must not reach an event POST.
func TestEventHeadersNeverForwardCablecarHeaders(t *testing.T) {
	s := &Server{cfg: Config{ForwardHeaders: []string{"Cookie", "Cablecar-Upgrade", "cablecar_claims", "CABLECAR-SIGNATURE", "X-Kept"}}}
	var h fasthttp.RequestHeader
	h.SetHost("example.com")
	h.Set("Cookie", "sid=1")
	h.Set("Cablecar-Upgrade", "websocket")
	h.Set("Cablecar_Claims", `{"sub":"42"}`)
	h.Set("Cablecar-Signature", "t=1,v1=00")
	h.Set("X-Kept", "yes")
	got := map[string]string{}
	for _, kv := range s.eventHeaders(&h) {
		got[kv[0]] = kv[1]
	}
	want := map[string]string{"Host": "example.com", "Cookie": "sid=1", "X-Kept": "yes"}
	if len(got) != len(want) {
		t.Errorf("event headers %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("event header %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
}
