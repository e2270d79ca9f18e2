package admin

import (
	"context"
	"encoding/json"
	"errors"
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

func post(s *Server, path, body, key string) (int, string) {
	req := httptest.NewRequest("POST", path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	rec := httptest.NewRecorder()
	s.mux.ServeHTTP(rec, req)
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
