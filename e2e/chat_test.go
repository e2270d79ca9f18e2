package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// The chat example (examples/chat) over plain WebSocket clients: what the
// page relies on, on one node with the in-memory broker and on two nodes
// sharing Redis, with the very same app. The browser test (browser_test.go)
// drives the page itself.

const chatWait = 10 * time.Second

// chatMsg is any message the chat app sends.
type chatMsg struct {
	Type     string    `json:"type"`
	Nick     string    `json:"nick"`
	Text     string    `json:"text"`
	At       string    `json:"at"`
	Room     string    `json:"room"`
	Online   int       `json:"online"`
	Nicks    []string  `json:"nicks"`
	Messages []chatMsg `json:"messages"`
}

func (m chatMsg) String() string {
	switch m.Type {
	case "count":
		return fmt.Sprintf("count %d", m.Online)
	case "history":
		return fmt.Sprintf("history of %d", len(m.Messages))
	default:
		return fmt.Sprintf("%s %q %.40q", m.Type, m.Nick, m.Text)
	}
}

// chatApp is examples/chat/config.ru under Puma with a fresh callback
// secret, and the options for a Cablecar in front of it.
type chatApp struct {
	Puma   *Puma
	Secret string
}

// startChatApp runs the example under Puma with the gem from ruby/lib.
func startChatApp(t testing.TB) *chatApp {
	t.Helper()
	root := RepoRoot(t)
	secret := fmt.Sprintf("chat-%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), time.Now().UnixNano())
	p := StartPuma(t, PumaOptions{
		Rackup: filepath.Join(root, "examples", "chat", "config.ru"),
		Env: map[string]string{
			"RUBYLIB":                  filepath.Join(root, "ruby", "lib"),
			"CABLECAR_CALLBACK_SECRET": secret,
		},
	})
	return &chatApp{Puma: p, Secret: secret}
}

// cablecar starts a node in front of the app, signing with its secret,
// with config over that.
func (a *chatApp) cablecar(t testing.TB, config map[string]any) *Cablecar {
	t.Helper()
	cfg := map[string]any{
		"callback.secret": a.Secret,
		// These clients answer pings only while they read.
		"websocket.pong_timeout": "60s",
	}
	for k, v := range config {
		cfg[k] = v
	}
	return StartCablecar(t, CablecarOptions{Upstream: a.Puma.Upstream, Config: cfg})
}

// chatter is one person in the chat, over a plain WebSocket client.
type chatter struct {
	t    testing.TB
	nick string
	ws   *WSClient
	// pos is the position ("<epoch>:<offset>") of the last broadcast read,
	// when the channel keeps history.
	pos string
}

// join connects nick (path-escaped here) to room on c and reads what a
// newcomer gets first: the history, its own join notice and the count.
func join(t testing.TB, c *Cablecar, room, nick string, online int) (*chatter, []chatMsg) {
	t.Helper()
	ws, _ := MustDialWS(t, chatURL(c, room, nick), nil)
	ch := &chatter{t: t, nick: nick, ws: ws}
	history := ch.expect("history")
	if history.Room != room {
		t.Fatalf("%s: history of room %q, want %q", nick, history.Room, room)
	}
	ch.expectJoin(nick)
	ch.expectCount(online)
	return ch, history.Messages
}

func chatURL(c *Cablecar, room, nick string) string {
	return c.URL + "/chat/" + pathEscape(room) + "/" + pathEscape(nick)
}

// pathEscape escapes every byte but unreserved ones, as encodeURIComponent
// does in the page.
func pathEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_.~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// next reads the next message, which must be JSON: what the app wrote, or
// a broadcast in Cablecar's envelope (the app asks for it), unwrapped.
func (ch *chatter) next() chatMsg {
	ch.t.Helper()
	kind, data, err := ch.ws.Read(chatWait)
	if err != nil {
		ch.t.Fatalf("%s: reading the next message: %v", ch.nick, err)
	}
	var env struct {
		Channel *string `json:"channel"`
		Epoch   string  `json:"epoch"`
		Offset  int64   `json:"offset"`
		Data    string  `json:"data"`
	}
	if kind == TextMessage && json.Unmarshal(data, &env) == nil && env.Channel != nil {
		data = []byte(env.Data)
		if env.Epoch != "" {
			ch.pos = fmt.Sprintf("%s:%d", env.Epoch, env.Offset)
		}
	}
	var m chatMsg
	if kind != TextMessage || json.Unmarshal(data, &m) != nil {
		ch.t.Fatalf("%s: got %s %.200q, want a JSON text message", ch.nick, kindName(kind), data)
	}
	return m
}

// expect reads the next message and requires its type.
func (ch *chatter) expect(typ string) chatMsg {
	ch.t.Helper()
	m := ch.next()
	if m.Type != typ {
		ch.t.Fatalf("%s: got %v, want a %s message", ch.nick, m, typ)
	}
	return m
}

func (ch *chatter) expectJoin(nick string) {
	ch.t.Helper()
	if m := ch.expect("join"); m.Nick != nick || m.At == "" {
		ch.t.Fatalf("%s: got %v, want %s's join", ch.nick, m, nick)
	}
}

func (ch *chatter) expectLeave(nick string) {
	ch.t.Helper()
	if m := ch.expect("leave"); m.Nick != nick {
		ch.t.Fatalf("%s: got %v, want %s's leave", ch.nick, m, nick)
	}
}

func (ch *chatter) expectCount(online int) {
	ch.t.Helper()
	if m := ch.expect("count"); m.Online != online {
		ch.t.Fatalf("%s: online count %d, want %d", ch.nick, m.Online, online)
	}
}

// expectSaid requires that the next message is nick saying text. Called
// right after the same check for an earlier message, it also proves that
// one came only once.
func (ch *chatter) expectSaid(nick, text string) {
	ch.t.Helper()
	if m := ch.expect("message"); m.Nick != nick || m.Text != text || m.At == "" {
		ch.t.Fatalf("%s: got %v, want %s saying %q", ch.nick, m, nick, text)
	}
}

func (ch *chatter) say(text string) {
	ch.t.Helper()
	ch.ws.Send(text)
}

// leave closes the socket as a browser tab would.
func (ch *chatter) leave() {
	ch.t.Helper()
	ch.ws.CloseWith(chatWait, websocket.CloseGoingAway, "")
}

// talk runs the conversation every chat test shares between a on one node
// and b on another (or the same): joins, counts, each message seen exactly
// once by its sender and once by the other, an error for the sender only,
// history for a newcomer, and the leave.
func talk(t *testing.T, ca, cb *Cablecar, room string) *chatter {
	a, history := join(t, ca, room, "alice", 1)
	if len(history) != 0 {
		t.Fatalf("history of a new room: %v", history)
	}
	b, _ := join(t, cb, room, "böb ☕", 2)
	a.expectJoin("böb ☕")
	if m := a.expect("count"); m.Online != 2 || strings.Join(m.Nicks, "|") != "alice|böb ☕" {
		t.Fatalf("alice: count %d of %q, want 2 of alice and böb ☕", m.Online, m.Nicks)
	}

	a.say("hi <b>böb</b>")
	a.expectSaid("alice", "hi <b>böb</b>")
	b.expectSaid("alice", "hi <b>böb</b>")

	b.say(strings.Repeat("é", 2001))
	if m := b.expect("error"); !strings.Contains(m.Text, "2000") {
		t.Fatalf("error for a long message: %q", m.Text)
	}
	b.say("hello alice")
	b.expectSaid("böb ☕", "hello alice")
	a.expectSaid("böb ☕", "hello alice") // not the error, nor "hi" again

	a.say("third")
	a.expectSaid("alice", "third") // not "hi" a second time
	b.expectSaid("alice", "third")

	// A newcomer gets the history, then is counted like anyone.
	c, history := join(t, ca, room, "carol", 3)
	var said []string
	for _, m := range history {
		said = append(said, m.Nick+": "+m.Text)
	}
	if want := []string{"alice: hi <b>böb</b>", "böb ☕: hello alice", "alice: third"}; strings.Join(said, "|") != strings.Join(want, "|") {
		t.Fatalf("history %q, want %q", said, want)
	}
	for _, ch := range []*chatter{a, b} {
		ch.expectJoin("carol")
		ch.expectCount(3)
	}
	c.leave()
	for _, ch := range []*chatter{a, b} {
		ch.expectLeave("carol")
		ch.expectCount(2)
	}

	b.leave()
	a.expectLeave("böb ☕")
	a.expectCount(1)
	return a
}

// TestChatOneNode runs the chat example behind one Cablecar on the
// in-memory broker, the way `make demo` does.
func TestChatOneNode(t *testing.T) {
	t.Parallel()
	app := startChatApp(t)
	c := app.cablecar(t, nil)

	// The page and its assets come through the proxy.
	client := &http.Client{Timeout: chatWait}
	for path, want := range map[string]string{"/": "chat.js", "/chat.js": "new WebSocket", "/chat.css": "data-state"} {
		code, body, err := get(client, c.URL+path, chatWait)
		if err != nil || code != 200 || !strings.Contains(body, want) {
			t.Fatalf("GET %s: %d %v, body without %q: %.100q", path, code, err, want, body)
		}
	}
	if code, _, err := get(client, c.URL+"/chat/lobby/alice", chatWait); err != nil || code != 426 {
		t.Fatalf("plain GET of a chat socket: %d %v, want 426", code, err)
	}

	// Bad rooms and nicknames are refused at the handshake.
	for _, target := range []string{
		"/chat/" + pathEscape("no room") + "/alice",
		"/chat/" + strings.Repeat("r", 33) + "/alice",
		"/chat/lobby/" + strings.Repeat("n", 33),
		"/chat/lobby/%FF%FE",
		"/chat/lobby/%20%20",
		"/chat/lobby/a%0Ab",
		"/chat/lobby/alice/more",
		"/chat/lobby",
	} {
		_, resp, err := DialWS(t, c.URL+target, nil)
		if err == nil || resp == nil || resp.StatusCode != 400 {
			t.Errorf("%s: %v%s, want 400", target, err, describeResponse(resp))
		}
	}
	// 32 characters (64 bytes) is not too long.
	long := strings.Repeat("é", 32)
	ch, _ := join(t, c, "long", long, 1)
	ch.leave()

	a := talk(t, c, c, "lobby")

	// Rooms are separate.
	other, _ := join(t, c, "other-room_2", "dave", 1)
	other.say("only here")
	other.expectSaid("dave", "only here")
	a.say("still here")
	a.expectSaid("alice", "still here") // nothing from the other room came first
}

// TestChatRedisTwoNodes runs the very same app behind two Cablecar nodes
// sharing Redis: the two people talk across nodes, and when a node dies
// the app still hears the close of its connections, so the count is right.
func TestChatRedisTwoNodes(t *testing.T) {
	t.Parallel()
	r := StartRedis(t)
	app := startChatApp(t)
	cfg := map[string]any{"broker.url": r.URL, "broker.lease_ttl": leaseTTL.String()}
	n1, n2 := app.cablecar(t, cfg), app.cablecar(t, cfg)
	for _, c := range []*Cablecar{n1, n2} {
		WaitFor(t, 15*time.Second, "/readyz 200 on "+c.AdminAddr, func() bool { return c.AdminStatus("/readyz") == 200 })
	}

	a := talk(t, n1, n2, "lobby")

	// Someone on node 2 when it dies: node 1 posts the app the close event
	// (by: node_lost), and carries out the publishes of the app's reply, so
	// alice hears that erin left and the count is right again.
	join(t, n2, "lobby", "erin", 2)
	a.expectJoin("erin")
	a.expectCount(2)
	n2.Kill()
	n1.WaitLog(nodeLostWait, "node 1 to post the close events of node 2's connections", func(l LogLine) bool {
		return l.Str("message") == "registry: posted the close events of a lost node"
	})
	a.expectLeave("erin")
	a.expectCount(1)
	join(t, n1, "lobby", "frank", 2)
	a.expectJoin("frank")
	a.expectCount(2)
}

// TestChatRubyTestKit runs the example's own Ruby tests, which use the
// gem's Cablecar::Testing and need no sidecar, so a change to the gem that
// breaks the example shows here too.
func TestChatRubyTestKit(t *testing.T) {
	t.Parallel()
	ruby := requireTool(t, "ruby")
	root := RepoRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, ruby, "-I", filepath.Join(root, "ruby", "lib"),
		filepath.Join(root, "examples", "chat", "test", "chat_test.rb"))
	cmd.Dir = root
	cmd.Env = append(cleanEnv(), "CABLECAR_CALLBACK_SECRET=chat-kit-test")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), " 0 failures, 0 errors") {
		t.Fatalf("examples/chat/test/chat_test.rb: %v\n%s", err, out)
	}
}
