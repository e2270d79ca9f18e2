package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/pubsub"
)

// recorder is a Broadcaster that keeps what it was asked to do.
type recorder struct {
	published []pubsub.Message
	commands  []pubsub.Command
	err       error
}

func (r *recorder) Publish(_ context.Context, msgs ...pubsub.Message) error {
	if r.err != nil {
		return r.err
	}
	r.published = append(r.published, msgs...)
	return nil
}

func (r *recorder) Direct(_ context.Context, cmd pubsub.Command) error {
	if r.err != nil {
		return r.err
	}
	if cmd.Connection == "c_gone" {
		return pubsub.ErrNoConnection
	}
	r.commands = append(r.commands, cmd)
	return nil
}

// post sends body as a well-behaved client would: JSON, to the listener by
// its address, with no Origin. Each header in hdr replaces one of those
// ("" removes it).
func post(s *Server, path, body, key string, hdr ...string) (int, string) {
	req := httptest.NewRequest("POST", path, strings.NewReader(body))
	req.Host = "127.0.0.1:9394"
	req.Header.Set("Content-Type", "application/json")
	return serve(s, req, key, hdr...)
}

func serve(s *Server, req *http.Request, key string, hdr ...string) (int, string) {
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		switch {
		case hdr[i] == "Host":
			req.Host = hdr[i+1]
		case hdr[i+1] == "":
			req.Header.Del(hdr[i])
		default:
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestAPI(t *testing.T) {
	tests := []struct {
		name, path, body string
		status           int
		errContains      string
		published        []pubsub.Message
		commands         []pubsub.Command
	}{
		{name: "publish one", path: "/publish", body: `{"channel":"room:1","data":"hi"}`, status: 200,
			published: []pubsub.Message{{Channel: "room:1", Data: []byte("hi")}}},
		{name: "publish binary with except", path: "/publish", body: `{"channel":"a","data":"AAEC/w==","binary":true,"except":"c_x"}`, status: 200,
			published: []pubsub.Message{{Channel: "a", Data: []byte{0, 1, 2, 255}, Binary: true, Except: "c_x"}}},
		{name: "publish many", path: "/publish", body: `[{"channel":"a","data":"1"},{"channel":"b","data":""}]`, status: 200,
			published: []pubsub.Message{{Channel: "a", Data: []byte("1")}, {Channel: "b", Data: []byte{}}}},
		{name: "bad channel publishes nothing", path: "/publish", body: `[{"channel":"a","data":"1"},{"channel":"b c","data":"2"}]`, status: 400, errContains: "message 1"},
		{name: "missing data", path: "/publish", body: `{"channel":"a"}`, status: 400, errContains: `"data" is missing`},
		{name: "binary not base64", path: "/publish", body: `{"channel":"a","data":"%%%","binary":true}`, status: 400, errContains: "base64"},
		{name: "unknown field", path: "/publish", body: `{"chanel":"a","data":"x"}`, status: 400, errContains: "chanel"},
		{name: "empty array", path: "/publish", body: `[]`, status: 400, errContains: "empty"},
		{name: "not JSON", path: "/publish", body: `hello`, status: 400, errContains: "invalid JSON"},
		{name: "two values", path: "/publish", body: `{"channel":"a","data":"x"} {}`, status: 400, errContains: "more than one"},
		{name: "send", path: "/send", body: `{"connection":"c_1","data":"you"}`, status: 200,
			commands: []pubsub.Command{{Kind: pubsub.CommandSend, Connection: "c_1", Data: []byte("you")}}},
		{name: "send to nobody", path: "/send", body: `{"connection":"c_gone","data":"you"}`, status: 404},
		{name: "send without connection", path: "/send", body: `{"data":"you"}`, status: 400, errContains: "connection"},
		{name: "close default code", path: "/close", body: `{"connection":"c_1"}`, status: 200,
			commands: []pubsub.Command{{Kind: pubsub.CommandClose, Connection: "c_1", Code: 1000}}},
		{name: "close app code", path: "/close", body: `{"connection":"c_1","code":4001,"reason":"bye"}`, status: 200,
			commands: []pubsub.Command{{Kind: pubsub.CommandClose, Connection: "c_1", Code: 4001, Reason: "bye"}}},
		{name: "close reserved code", path: "/close", body: `{"connection":"c_1","code":1006}`, status: 400, errContains: "1006"},
		{name: "close a channel", path: "/close", body: `{"channel":"room:1","code":4002,"reason":"gone","reconnect":false}`, status: 200,
			published: []pubsub.Message{{Channel: "room:1", Close: &pubsub.ChannelClose{Code: 4002, Reason: "gone", NoReconnect: true}}}},
		{name: "close a channel, default code", path: "/close", body: `{"channel":"room:1"}`, status: 200,
			published: []pubsub.Message{{Channel: "room:1", Close: &pubsub.ChannelClose{Code: 1000}}}},
		{name: "close a bad channel", path: "/close", body: `{"channel":"a b"}`, status: 400, errContains: "channel"},
		{name: "close both", path: "/close", body: `{"channel":"a","connection":"c_1"}`, status: 400, errContains: "not both"},
		{name: "close nothing", path: "/close", body: `{"code":4000}`, status: 400, errContains: `"channel"`},
		{name: "close long reason", path: "/close", body: `{"connection":"c_1","reason":"` + strings.Repeat("x", 124) + `"}`, status: 400, errContains: "123"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(zerolog.Nop(), prometheus.NewRegistry())
			rec := &recorder{}
			s.EnableAPI(rec, "")
			status, body := post(s, tt.path, tt.body, "")
			if status != tt.status {
				t.Fatalf("status %d, want %d; body %s", status, tt.status, body)
			}
			if tt.status >= 400 {
				var e struct{ Error string }
				if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" || !strings.Contains(e.Error, tt.errContains) {
					t.Fatalf("error body %s, want {\"error\": …%s…}", body, tt.errContains)
				}
			}
			if !reflect.DeepEqual(rec.published, tt.published) || !reflect.DeepEqual(rec.commands, tt.commands) {
				t.Fatalf("published %+v commands %+v; want %+v %+v", rec.published, rec.commands, tt.published, tt.commands)
			}
		})
	}
}

func TestAPIKey(t *testing.T) {
	s := New(zerolog.Nop(), prometheus.NewRegistry())
	rec := &recorder{}
	s.EnableAPI(rec, "s3cret")
	body := `{"channel":"a","data":"x"}`
	for _, key := range []string{"", "wrong", "s3cre", "s3cret2"} {
		if status, _ := post(s, "/publish", body, key); status != 401 {
			t.Errorf("key %q: status %d, want 401", key, status)
		}
	}
	if status, out := post(s, "/publish", body, "s3cret"); status != 200 {
		t.Fatalf("right key: %d %s", status, out)
	}
	if len(rec.published) != 1 {
		t.Fatalf("published %d messages, want 1", len(rec.published))
	}
}

func TestAPIBrokerDown(t *testing.T) {
	s := New(zerolog.Nop(), prometheus.NewRegistry())
	s.EnableAPI(&recorder{err: errors.New("redis: connection refused")}, "")
	status, body := post(s, "/publish", `{"channel":"a","data":"x"}`, "")
	if status != 503 || !strings.Contains(body, "connection refused") {
		t.Fatalf("broker down: %d %s", status, body)
	}
}

// fakeLookup finds the connections in open; c_broken cannot be looked up.
func fakeLookup(open map[string]Connection) Lookup {
	return func(_ context.Context, id string) (Connection, bool, error) {
		if id == "c_broken" {
			return Connection{}, false, errors.New("redis: connection refused")
		}
		c, ok := open[id]
		return c, ok, nil
	}
}

func TestConnectionLookup(t *testing.T) {
	s := New(zerolog.Nop(), prometheus.NewRegistry())
	s.EnableAPI(&recorder{}, "k")
	s.EnableLookup(fakeLookup(map[string]Connection{
		"c_one":  {ID: "c_one", Node: "nodeAAAA", Channels: []string{"room:2", "room:1"}},
		"c_none": {ID: "c_none", Node: "nodeAAAA"},
	}))
	get := func(path, key string) (int, string) {
		return serve(s, httptest.NewRequest("GET", "http://127.0.0.1:9394"+path, nil), key)
	}
	tests := []struct {
		path, key string
		status    int
		body      string
	}{
		{"/connections/c_one", "k", 200, `{"id":"c_one","node":"nodeAAAA","channels":["room:1","room:2"]}`},
		{"/connections/c_none", "k", 200, `{"id":"c_none","node":"nodeAAAA","channels":[]}`},
		{"/connections/c_one", "", 401, ""},
		{"/connections/c_gone", "k", 404, "not open"},
		{"/connections/c_broken", "k", 503, "connection refused"},
		{"/connections/", "k", 404, ""},
	}
	for _, tt := range tests {
		status, body := get(tt.path, tt.key)
		if status != tt.status || !strings.Contains(body, tt.body) {
			t.Errorf("GET %s: %d %s; want %d with %s", tt.path, status, body, tt.status, tt.body)
		}
	}
}
