package upgrade

import (
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/callback"
)

func TestParseAcceptance(t *testing.T) {
	tests := []struct {
		name    string
		resp    map[string]string
		offered string
		want    acceptance
		err     string
	}{
		{name: "nothing asked", want: acceptance{events: allEvents}},
		{
			name: "everything",
			resp: map[string]string{
				"Cablecar-Subscribe":     " room:1 ,room:2,, user@x ",
				"Cablecar-State":         "s=1",
				"Cablecar-Events":        "open, Close",
				"Cablecar-Events-Path":   "/cable/events?x=1",
				"Sec-WebSocket-Protocol": "chat.v2",
			},
			offered: "chat.v1, chat.v2",
			want: acceptance{
				subscribe: []string{"room:1", "room:2", "user@x"}, state: "s=1",
				events: eventOpen | eventClose, eventsPath: "/cable/events?x=1", protocol: "chat.v2",
			},
		},
		{name: "no events at all", resp: map[string]string{"Cablecar-Events": " "}, want: acceptance{events: 0}},
		{name: "shutdown asked for", resp: map[string]string{"Cablecar-Events": "message, SHUTDOWN"}, want: acceptance{events: eventMessage | eventShutdown}},
		{name: "bad channel", resp: map[string]string{"Cablecar-Subscribe": "room 1"}, err: "Cablecar-Subscribe"},
		{name: "state too long", resp: map[string]string{"Cablecar-State": strings.Repeat("x", callback.MaxStateSize+1)}, err: "Cablecar-State"},
		{name: "unknown event", resp: map[string]string{"Cablecar-Events": "open,shout"}, err: `"shout"`},
		{name: "events path not a path", resp: map[string]string{"Cablecar-Events-Path": "http://evil/"}, err: "Cablecar-Events-Path"},
		{name: "events path to another host", resp: map[string]string{"Cablecar-Events-Path": "//evil/x"}, err: "Cablecar-Events-Path"},
		{name: "protocol not offered", resp: map[string]string{"Sec-WebSocket-Protocol": "v3"}, offered: "v1,v2", err: "not offered"},
		{name: "protocol with no offer", resp: map[string]string{"Sec-WebSocket-Protocol": "v1"}, err: "not offered"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp fasthttp.ResponseHeader
			for k, v := range tt.resp {
				resp.Set(k, v)
			}
			var req fasthttp.RequestHeader
			if tt.offered != "" {
				req.Set("Sec-WebSocket-Protocol", tt.offered)
			}
			got, err := parseAcceptance(&resp, &req)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got.subscribe, "|") != strings.Join(tt.want.subscribe, "|") || got.state != tt.want.state ||
				got.events != tt.want.events || got.eventsPath != tt.want.eventsPath || got.protocol != tt.want.protocol {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestCheckHandshake(t *testing.T) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	tests := []struct {
		name, method, version, key string
		status                     int
	}{
		{"valid", "GET", "13", key, 0},
		{"POST", "POST", "13", key, 400},
		{"old version", "GET", "8", key, 426},
		{"no version", "GET", "", key, 426},
		{"no key", "GET", "13", "", 400},
		{"key not base64", "GET", "13", "!!!!!!!!!!!!!!!!!!!!!!==", 400},
		{"key of 15 bytes", "GET", "13", "AAAAAAAAAAAAAAAAAAAA", 400},
		{"key far too long", "GET", "13", strings.Repeat("A", 4000), 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ctx fasthttp.RequestCtx
			ctx.Request.Header.SetMethod(tt.method)
			if tt.version != "" {
				ctx.Request.Header.Set("Sec-WebSocket-Version", tt.version)
			}
			if tt.key != "" {
				ctx.Request.Header.Set("Sec-WebSocket-Key", tt.key)
			}
			status, _ := checkHandshake(&ctx)
			if status != tt.status {
				t.Fatalf("status = %d, want %d", status, tt.status)
			}
			if status == 426 && string(ctx.Response.Header.Peek("Sec-WebSocket-Version")) != "13" {
				t.Fatal("426 without Sec-WebSocket-Version: 13")
			}
		})
	}
}

func TestConnectionIDs(t *testing.T) {
	a := newHub(Config{}, zeroLogger(), nil, nil)
	b := newHub(Config{}, zeroLogger(), nil, nil)
	seen := map[string]bool{}
	for _, h := range []*Hub{a, b} {
		for i := 0; i < 1000; i++ {
			id := h.newID()
			if seen[id] {
				t.Fatalf("id %s repeated", id)
			}
			seen[id] = true
			if !strings.HasPrefix(id, "c_"+h.node) || len(id) != 2+8+16 {
				t.Fatalf("id %q: want c_ + node %q + 16 characters", id, h.node)
			}
		}
	}
	if a.node == b.node {
		t.Fatalf("two hubs share node id %q", a.node)
	}
}
