package upgrade

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"

	"github.com/cablecar/cablecar/actioncable"
)

// A message over websocket.max_message_size is closed 1009 by too_big
// through Cablecar's writer: an ActionCable client gets its disconnect
// frame first (the WebSocket library, left to enforce the limit, wrote the
// close frame itself, before it); a plain client gets the close alone.
func TestTooBigClosedThroughWriter(t *testing.T) {
	app := startFakeApp(t)
	n := startNode(t, app, Config{MaxMessageSize: 64})
	for _, tc := range []struct {
		name, path string
		protos     []string
		want       []string // frames before the close
	}{
		{"raw", "/chat", nil, nil},
		{"actioncable", "/cable?proto=actioncable-v1-json", []string{"actioncable-v1-json", "actioncable-unsupported"}, []string{
			string(actioncable.AppendWelcome(nil, actioncable.Welcome{})),
			string(actioncable.AppendDisconnect(nil, "too_big", true)),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: tc.protos}
			ws, _, err := d.Dial(n.url+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ws.Close() })
			if tc.protos != nil {
				// The welcome first, so the message comes after the accept.
				if _, m, err := ws.ReadMessage(); err != nil || string(m) != tc.want[0] {
					t.Fatalf("first frame %q, %v; want the welcome", m, err)
				}
				tc.want = tc.want[1:]
			}
			if err := ws.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("x", 65))); err != nil {
				t.Fatal(err)
			}
			ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			var got []string
			for {
				_, m, err := ws.ReadMessage()
				if err != nil {
					var ce *websocket.CloseError
					if !errors.As(err, &ce) || ce.Code != websocket.CloseMessageTooBig {
						t.Fatalf("after %q: %v, want close 1009", got, err)
					}
					break
				}
				got = append(got, string(m))
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("frames before the close %q, want %q", got, tc.want)
			}
		})
	}
	// A message of the limit's size is read.
	ws, _ := dial(t, n.url+"/chat")
	if err := ws.WriteMessage(websocket.TextMessage, []byte("echo:"+strings.Repeat("y", 59))); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, m, err := ws.ReadMessage(); err != nil || len(m) != 59 {
		t.Fatalf("a message at the limit: got %d bytes, %v; want its echo", len(m), err)
	}
}
