package admin

import (
	"encoding/base64"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/pubsub"
)

// FuzzAPIBody: whatever the body, the API never panics and never answers
// 5xx (the broker here never fails), refuses with a JSON error, and what it
// accepts round-trips: the messages and commands it passed on, written back
// as API bodies, are accepted again and pass on the same.
func FuzzAPIBody(f *testing.F) {
	for _, seed := range []string{
		`{"channel":"room:1","data":"hi"}`,
		`{"channel":"a","data":"AAEC/w==","binary":true,"except":"c_x"}`,
		`[{"channel":"a","data":"1"},{"channel":"b","data":""}]`,
		`{"connection":"c_1","data":"you"}`,
		`{"connection":"c_1","code":4001,"reason":"bye"}`,
		`{"channel":"a","data":"\ud800"}`, `[]`, `[{}]`, `null`, `{"code":1e400}`, `{"data":"x"} {}`, "\xff",
	} {
		for path := range 3 {
			f.Add(uint8(path), []byte(seed))
		}
	}
	paths := []string{"/publish", "/send", "/close"}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		path := paths[int(which)%len(paths)]
		s := New(zerolog.Nop(), prometheus.NewRegistry())
		rec := &recorder{}
		s.EnableAPI(rec, "")
		status, out := post(s, path, string(body), "")
		if status >= 500 {
			t.Fatalf("POST %s %q: %d %s", path, body, status, out)
		}
		if status != 200 {
			var e struct{ Error string }
			if json.Unmarshal([]byte(out), &e) != nil || e.Error == "" {
				t.Fatalf("POST %s %q: %d with %q, want a JSON error", path, body, status, out)
			}
			if len(rec.published)+len(rec.commands) != 0 {
				t.Fatalf("POST %s %q refused (%d) yet passed something on", path, body, status)
			}
			return
		}
		again := &recorder{}
		s2 := New(zerolog.Nop(), prometheus.NewRegistry())
		s2.EnableAPI(again, "")
		for _, b := range rewrite(t, rec) {
			if status, out := post(s2, path, string(b), ""); status != 200 {
				t.Fatalf("POST %s %q passed on %+v %+v, but its rewrite %s is refused: %d %s", path, body, rec.published, rec.commands, b, status, out)
			}
		}
		if !reflect.DeepEqual(rec.published, again.published) || !reflect.DeepEqual(rec.commands, again.commands) {
			t.Fatalf("POST %s %q: %+v %+v, rewritten: %+v %+v", path, body, rec.published, rec.commands, again.published, again.commands)
		}
	})
}

// rewrite writes what rec was asked to do back as API bodies.
func rewrite(t *testing.T, rec *recorder) [][]byte {
	data := func(b []byte, binary bool) string {
		if binary {
			return base64.StdEncoding.EncodeToString(b)
		}
		return string(b)
	}
	var items []map[string]any
	for _, m := range rec.published {
		items = append(items, map[string]any{"channel": m.Channel, "data": data(m.Data, m.Binary), "binary": m.Binary, "except": m.Except})
	}
	var bodies []any
	if len(items) > 0 {
		bodies = append(bodies, items)
	}
	for _, c := range rec.commands {
		switch c.Kind {
		case pubsub.CommandSend:
			bodies = append(bodies, map[string]any{"connection": c.Connection, "data": data(c.Data, c.Binary), "binary": c.Binary})
		case pubsub.CommandClose:
			bodies = append(bodies, map[string]any{"connection": c.Connection, "code": c.Code, "reason": c.Reason})
		}
	}
	out := make([][]byte, len(bodies))
	for i, b := range bodies {
		var err error
		if out[i], err = json.Marshal(b); err != nil {
			t.Fatal(err)
		}
	}
	return out
}
