package e2e

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cablecar/cablecar/auth"
)

// No forged claims (SPEC §1, §6): a client sends Cablecar's headers under
// every spelling a Rack server reads as Cablecar's (Cablecar_Claims and
// Cablecar-Claims are both HTTP_CABLECAR_CLAIMS to Puma), on plain HTTP
// and on a WebSocket handshake, and the app — a bare Rack app and one on
// the gem, under the real Puma — never sees one of them: not on the plain
// request, not on the accept, not on the event POSTs, not in the gem's
// env["cablecar.claims"].

// forgedRackup answers, on /raw, with the env keys it got from Cablecar-ish
// headers (the accept's become the first message, each event POST's a
// message sent back), and on /gem, behind Cablecar::Middleware, with the
// claims the gem gave the app at the accept and at the open event.
const forgedRackup = `# frozen_string_literal: true
require "json"
require "cablecar"

cablecar_keys = ->(env) { env.select { |k, _| k.start_with?("HTTP_CABLECAR") } }

raw = lambda do |env|
  seen = JSON.generate(cablecar_keys.(env))
  if env["HTTP_CABLECAR_UPGRADE"] == "websocket"
    [200, { "cablecar-accept" => "websocket", "content-type" => "text/plain" }, [seen]]
  elsif env["REQUEST_METHOD"] == "POST"
    [200, { "content-type" => "application/json" }, [JSON.generate("send" => [seen])]]
  else
    [200, { "content-type" => "application/json" }, [seen]]
  end
end

class ClaimsSeen
  def on_open(client) = client.write(JSON.generate("open" => client.claims))
end

gem = Rack::Builder.new do
  use Cablecar::Middleware, secret: ENV.fetch("FORGED_SECRET")
  run(lambda do |env|
    return [200, { "content-type" => "application/json" }, [JSON.generate(cablecar_keys.(env))]] unless env["rack.upgrade?"] == :websocket

    # The app runs again for each event; the accept is the first run.
    env["cablecar.client"].write(JSON.generate("accept" => env["cablecar.claims"])) unless env["cablecar.event"]
    env["rack.upgrade"] = ClaimsSeen.new
    [200, {}, []]
  end)
end

map("/raw") { run raw }
map("/gem") { run gem }
map("/") { run ->(_) { [200, { "content-type" => "text/plain" }, ["ok"]] } }
`

// forgedHeaders are what the client sends, under names Go must not
// canonicalize: the map is written, not Set.
func forgedHeaders() http.Header {
	return http.Header{
		"Cablecar_Claims":        {`{"sub":"42"}`},
		"cablecar_connection_id": {"c_forged"},
		"CABLECAR-SIGNATURE":     {"t=1,v1=" + strings.Repeat("0", 64)},
		"Cablecar_Subscribe":     {"admin"},
		"cablecar-claims":        {`{"sub":"43"}`},
	}
}

func TestForgedCablecarHeadersNeverReachTheApp(t *testing.T) {
	t.Parallel()
	const secret, jwtSecret = "forged-e2e-secret", "forged-e2e-jwt-secret"
	dir := t.TempDir()
	rackup := filepath.Join(dir, "config.ru")
	if err := os.WriteFile(rackup, []byte(forgedRackup), 0o644); err != nil {
		t.Fatal(err)
	}
	p := StartPuma(t, PumaOptions{Rackup: rackup, Env: map[string]string{
		"RUBYLIB": filepath.Join(RepoRoot(t), "ruby", "lib"), "FORGED_SECRET": secret,
	}})
	c := StartCablecar(t, CablecarOptions{Upstream: p.Upstream, Config: map[string]any{
		"callback.secret": secret,
		// callback.forward_headers cannot name Cablecar's own headers (the
		// config refuses them); upgrade's eventHeaders skips them anyway.
		"auth.jwt.hmac_secret": jwtSecret,
		"auth.jwt.required":    false,
	}})

	t.Run("plain HTTP", func(t *testing.T) {
		for _, path := range []string{"/raw/page", "/gem/page"} {
			req := newRequest(t, "GET", c.URL+path, nil)
			req.Header = forgedHeaders()
			req.Header["Cablecar_Upgrade"] = []string{"websocket"} // would make it an accept
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "{}" {
				t.Errorf("GET %s: the app saw %d %s; want 200 and no Cablecar header", path, resp.StatusCode, body)
			}
		}
	})

	t.Run("WebSocket accept and events", func(t *testing.T) {
		ws, _ := MustDialWS(t, c.URL+"/raw/ws?room=1", forgedHeaders())
		accept := readKeys(t, ws, "the accept")
		id := accept["HTTP_CABLECAR_CONNECTION_ID"]
		if !strings.HasPrefix(id, "c_") || strings.Contains(id, "forged") {
			t.Errorf("the accept's connection id is %q", id)
		}
		onlyKeys(t, "the accept", accept, "HTTP_CABLECAR_UPGRADE", "HTTP_CABLECAR_CONNECTION_ID", "HTTP_CABLECAR_SIGNATURE")
		if accept["HTTP_CABLECAR_UPGRADE"] != "websocket" {
			t.Errorf("the accept's Cablecar-Upgrade is %q", accept["HTTP_CABLECAR_UPGRADE"])
		}
		if err := auth.NewSigner([]string{secret}).Verify(accept["HTTP_CABLECAR_SIGNATURE"],
			auth.AcceptPayload("/raw/ws?room=1", id, ""), time.Now(), time.Minute); err != nil {
			t.Errorf("the accept's signature %q: %v", accept["HTTP_CABLECAR_SIGNATURE"], err)
		}

		open := readKeys(t, ws, "the open event")
		onlyKeys(t, "the open event", open, "HTTP_CABLECAR_CONNECTION_ID", "HTTP_CABLECAR_SIGNATURE")
		if open["HTTP_CABLECAR_CONNECTION_ID"] != id {
			t.Errorf("the open event's connection id is %q, the accept's %q", open["HTTP_CABLECAR_CONNECTION_ID"], id)
		}
	})

	// The attack itself: an app that trusts the gem's env["cablecar.claims"]
	// must not take the client's word for who it is.
	t.Run("the gem's claims", func(t *testing.T) {
		ws, _ := MustDialWS(t, c.URL+"/gem/ws", forgedHeaders())
		expectJSON(t, ws, `{"accept":null}`)
		expectJSON(t, ws, `{"open":null}`)

		claims := map[string]any{"sub": "7", "exp": time.Now().Add(time.Hour).Unix()}
		header := forgedHeaders()
		header["Authorization"] = []string{"Bearer " + signJWT("HS256", "", []byte(jwtSecret), claims)}
		ws, _ = MustDialWS(t, c.URL+"/gem/ws", header)
		want, _ := json.Marshal(claims)
		expectJSON(t, ws, `{"accept":`+string(want)+`}`)
		expectJSON(t, ws, `{"open":`+string(want)+`}`)
	})
}

// readKeys reads one message of /raw: the app's Cablecar-ish env keys.
func readKeys(t *testing.T, ws *WSClient, what string) map[string]string {
	t.Helper()
	_, data, err := ws.Read(wsWait)
	if err != nil {
		t.Fatalf("reading what %s saw: %v", what, err)
	}
	var keys map[string]string
	if err := json.Unmarshal(data, &keys); err != nil {
		t.Fatalf("%s: %q: %v", what, data, err)
	}
	return keys
}

// onlyKeys fails unless keys are exactly want, and no value is one the
// client sent.
func onlyKeys(t *testing.T, what string, keys map[string]string, want ...string) {
	t.Helper()
	if got := slices.Sorted(maps.Keys(keys)); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Errorf("%s saw %v; want only %v", what, keys, want)
	}
	for k, v := range keys {
		if strings.Contains(v, "forged") || strings.Contains(v, `"sub"`) || strings.Contains(v, "v1=000") {
			t.Errorf("%s saw the client's %s: %q", what, k, v)
		}
	}
}

// expectJSON reads one text message and compares it as JSON with want.
func expectJSON(t *testing.T, ws *WSClient, want string) {
	t.Helper()
	_, data, err := ws.Read(wsWait)
	if err != nil {
		t.Fatalf("reading %s: %v", want, err)
	}
	var got, w any
	if json.Unmarshal(data, &got) != nil || json.Unmarshal([]byte(want), &w) != nil {
		t.Fatalf("got %q, want %s", data, want)
	}
	g, _ := json.Marshal(got)
	wb, _ := json.Marshal(w)
	if string(g) != string(wb) {
		t.Errorf("the app saw %s, want %s", data, want)
	}
}

// acceptPayload is what an accept request's signature covers (SPEC §6),
// from what the test app recorded of it.
func acceptPayload(pathAndQuery string, a WSAppRequest) []byte {
	id, _ := a.Header("Cablecar-Connection-Id")
	claims, _ := a.Header("Cablecar-Claims")
	return auth.AcceptPayload(pathAndQuery, id, claims)
}
