package callback

import (
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/cablecar/cablecar/pubsub"
)

// FuzzParseReply checks that no reply body makes ParseReply panic, and that
// what it accepts keeps the promises the connection relies on.
//
//	go test -run - -fuzz FuzzParseReply ./callback/
func FuzzParseReply(f *testing.F) {
	for _, s := range []struct{ ct, body string }{
		{"application/json", `{"send":["text",{"data":"AAEC","binary":true}],"subscribe":["room:2"],"unsubscribe":["room:1"],` +
			`"publish":[{"channel":"room:2","data":"hi all","except_self":true}],"state":"s","close":{"code":4000,"reason":"bye"}}`},
		{"application/json; charset=utf-8", `{"close":{}}`},
		{"application/json", `{"send":[null,1,{"data":null}]}`},
		{"application/json", `{"publish":[{"channel":"a","data":"!!","binary":true}]}`},
		{"application/json", `[]`},
		{"application/json", ``},
		{"text/plain", "hello"},
		{"", "\xff"},
	} {
		f.Add([]byte(s.ct), []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, ct, body []byte) {
		r, err := ParseReply(ct, body)
		if err != nil {
			if r != nil {
				t.Fatal("reply and error both returned")
			}
			if !errors.Is(err, ErrInvalidReply) {
				t.Fatalf("error %v does not wrap ErrInvalidReply", err)
			}
			return
		}
		if r == nil {
			return
		}
		for _, ch := range append(append([]string(nil), r.Subscribe...), r.Unsubscribe...) {
			if pubsub.ValidateChannel(ch) != nil {
				t.Fatalf("invalid channel %q accepted", ch)
			}
		}
		for _, p := range r.Publish {
			if pubsub.ValidateChannel(p.Channel) != nil {
				t.Fatalf("invalid channel %q accepted", p.Channel)
			}
		}
		for _, fr := range r.Send {
			if !fr.Binary && !utf8.Valid(fr.Data) {
				t.Fatalf("text frame %q is not UTF-8", fr.Data)
			}
		}
		if r.State != nil && len(*r.State) > MaxStateSize {
			t.Fatalf("state of %d bytes accepted", len(*r.State))
		}
		if c := r.Close; c != nil {
			if c.Code != 1000 && (c.Code < 3000 || c.Code > 4999) {
				t.Fatalf("close code %d accepted", c.Code)
			}
			if len(c.Reason) > MaxCloseReasonSize || !utf8.ValidString(c.Reason) {
				t.Fatalf("close reason %q accepted", c.Reason)
			}
		}
	})
}
