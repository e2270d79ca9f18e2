package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// The admin API (SPEC §4): /publish, /send and /close on the admin
// listener, with the in-memory broker.
//
// These are the group TestWebSocket/Admin (see websocket_test.go); run one
// test, here testAdminPublish, with
//
//	go test -race -count=1 -run 'TestWebSocket/Admin/Publish$' ./e2e/

// wsAdminTests are TestWebSocket/Admin/<name>, each the function
// testAdmin<name>; they start in this order and run in parallel.
var wsAdminTests = []wsTest{
	{"Publish", testAdminPublish},
	{"Send", testAdminSend},
	{"Close", testAdminClose},
	{"BadInput", testAdminBadInput},
	{"APIKey", testAdminAPIKey},
}

func testAdminPublish(t *testing.T, e *wsEnv) {
	ch := channel("adm")
	a, ida := ConnectWS(t, e.c, e.p, target("/ws/chat/adm", "subscribe", ch), nil)
	b, _ := ConnectWS(t, e.c, e.p, target("/ws/chat/adm", "subscribe", ch), nil)

	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": ch, "data": "one"}, "")
	a.ExpectText(wsWait, "one")
	b.ExpectText(wsWait, "one")

	MustAdminPost(t, e.c, "/publish", []map[string]any{
		{"channel": ch, "data": "two"},
		{"channel": ch, "data": "three"},
		{"channel": channel("nobody"), "data": "to no one"},
	}, "")
	for _, ws := range []*WSClient{a, b} {
		ws.ExpectText(wsWait, "two")
		ws.ExpectText(wsWait, "three")
	}

	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": ch, "data": "not to a", "except": ida}, "")
	b.ExpectText(wsWait, "not to a")
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": ch, "data": "AAEC/w==", "binary": true}, "")
	a.ExpectBinary(wsWait, []byte{0, 1, 2, 0xff}) // not "not to a"
	b.ExpectBinary(wsWait, []byte{0, 1, 2, 0xff})

	// Many messages in one request arrive in order.
	var many []map[string]any
	for i := range 100 {
		many = append(many, map[string]any{"channel": ch, "data": fmt.Sprintf("m%03d", i)})
	}
	MustAdminPost(t, e.c, "/publish", many, "")
	for i := range 100 {
		a.ExpectText(wsWait, fmt.Sprintf("m%03d", i))
	}

	// The longest channel name allowed, and every allowed character.
	long := strings.Repeat("c", 256)
	odd := "a_b-c:d.e@f/g=h+i" + channel("")
	ws, _ := ConnectWS(t, e.c, e.p, target("/ws/chat/adm", "subscribe", long+","+odd), nil)
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": long, "data": "long"}, "")
	ws.ExpectText(wsWait, "long")
	MustAdminPost(t, e.c, "/publish", map[string]any{"channel": odd, "data": "odd"}, "")
	ws.ExpectText(wsWait, "odd")
}

func testAdminSend(t *testing.T, e *wsEnv) {
	a, ida := ConnectWS(t, e.c, e.p, "/ws/chat/send", nil)
	b, idb := ConnectWS(t, e.c, e.p, "/ws/chat/send", nil)
	MustAdminPost(t, e.c, "/send", map[string]any{"connection": idb, "data": "just b"}, "")
	b.ExpectText(wsWait, "just b")
	MustAdminPost(t, e.c, "/send", map[string]any{"connection": ida, "data": "just a"}, "")
	a.ExpectText(wsWait, "just a") // the first thing a gets

	code, body := AdminPost(t, e.c, "/send", map[string]any{"connection": "no-such-connection", "data": "x"}, "")
	if code != 404 {
		t.Errorf("/send to an unknown connection: %d %q, want 404", code, body)
	}
	checkJSONError(t, "/send to an unknown connection", code, body)
}

func testAdminClose(t *testing.T, e *wsEnv) {
	ws, id := ConnectWS(t, e.c, e.p, "/ws/chat/admclose", nil)
	MustAdminPost(t, e.c, "/close", map[string]any{"connection": id, "code": 4003, "reason": "admin bye"}, "")
	if code, reason := ws.ExpectClose(wsWait); code != 4003 || reason != "admin bye" {
		t.Errorf("closed with %d %q, want 4003 \"admin bye\"", code, reason)
	}
	if ev := WaitCloseEvent(t, e.p, id, wsWait); ev.By != "app" {
		t.Errorf("close event %v, want by app", ev)
	}
}

func testAdminBadInput(t *testing.T, e *wsEnv) {
	for _, tc := range []struct {
		name, path string
		body       any
	}{
		{"channel with a space", "/publish", map[string]any{"channel": "bad channel", "data": "x"}},
		{"channel with !", "/publish", map[string]any{"channel": "bad!", "data": "x"}},
		{"channel of 257 bytes", "/publish", map[string]any{"channel": strings.Repeat("c", 257), "data": "x"}},
		{"empty channel", "/publish", map[string]any{"channel": "", "data": "x"}},
		{"no channel", "/publish", map[string]any{"data": "x"}},
		{"bad channel in an array", "/publish", []map[string]any{{"channel": "ok", "data": "x"}, {"channel": "no way", "data": "y"}}},
		{"not JSON", "/publish", `{"channel": "a", "data": `},
		{"JSON of the wrong shape", "/publish", `"just a string"`},
		{"send without connection", "/send", map[string]any{"data": "x"}},
		{"send not JSON", "/send", "{"},
		{"close without connection", "/close", map[string]any{"code": 4000, "reason": "x"}},
		{"close not JSON", "/close", "nope"},
	} {
		code, body := AdminPost(t, e.c, tc.path, tc.body, "")
		if code != 400 {
			t.Errorf("%s: POST %s: %d %q, want 400", tc.name, tc.path, code, body)
			continue
		}
		checkJSONError(t, tc.name, code, body)
	}
}

func testAdminAPIKey(t *testing.T, e *wsEnv) {
	const key = "adm1n-k3y"
	c := e.cablecar(t, map[string]any{"admin.api_key": key})
	ws, id := ConnectWS(t, c, e.p, "/ws/chat/apikey", nil)
	msg := map[string]any{"connection": id, "data": "with key"}
	for _, path := range []string{"/send", "/publish", "/close"} {
		for _, k := range []string{"", "wrong", key + "x"} {
			if code, body := AdminPost(t, c, path, msg, k); code != 401 {
				t.Errorf("POST %s with key %q: %d %q, want 401", path, k, code, body)
			}
		}
	}
	// The bearer scheme alone, without the key, is not enough either.
	req, _ := http.NewRequest("POST", c.AdminURL+"/send", strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Basic "+key)
	if resp, err := c.admin.Do(req); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("Authorization: Basic <key>: %d, want 401", resp.StatusCode)
		}
	}
	MustAdminPost(t, c, "/send", msg, key)
	ws.ExpectText(wsWait, "with key")
}

// checkJSONError fails unless body is JSON {"error": "<something>"}.
func checkJSONError(t *testing.T, what string, code int, body string) {
	t.Helper()
	var reply struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &reply); err != nil || strings.TrimSpace(reply.Error) == "" {
		t.Errorf("%s: %d with body %q, want JSON {\"error\": \"…\"}", what, code, body)
	}
}
