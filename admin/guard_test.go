package admin

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

const goodPublish = `{"channel":"room:1","data":"hi"}`

// wantError fails unless the answer is status with a JSON {"error": …}
// that mentions about.
func wantError(t *testing.T, what string, status int, body string, wantStatus int, about string) {
	t.Helper()
	var e struct{ Error string }
	if status != wantStatus || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, about) {
		t.Errorf("%s: %d %s; want %d with {\"error\": …%s…}", what, status, body, wantStatus, about)
	}
}

// A page can POST text/plain, a form or multipart without a preflight;
// the API takes only JSON.
func TestAPIContentType(t *testing.T) {
	s := New(zerolog.Nop(), prometheus.NewRegistry())
	rec := &recorder{}
	s.EnableAPI(rec, "")
	for _, ct := range []string{"text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
		"multipart/form-data; boundary=x", "", "application/jsonx", "application/json; charset=latin1",
		"application/json; boundary=x", "application/json;;", "json"} {
		status, body := post(s, "/publish", goodPublish, "", "Content-Type", ct)
		wantError(t, "Content-Type "+ct, status, body, 415, "Content-Type")
	}
	if len(rec.published) != 0 {
		t.Fatalf("published %d messages from refused bodies", len(rec.published))
	}
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"} {
		if status, body := post(s, "/publish", goodPublish, "", "Content-Type", ct); status != 200 || body != "{\"published\":1}\n" {
			t.Errorf("Content-Type %q: %d %s; want 200 {\"published\":1}", ct, status, body)
		}
	}
	// The key is checked first: a caller without it learns nothing else.
	s = New(zerolog.Nop(), prometheus.NewRegistry())
	s.EnableAPI(&recorder{}, "k")
	if status, _ := post(s, "/send", `{}`, "", "Content-Type", "text/plain"); status != 401 {
		t.Errorf("no key and text/plain: %d, want 401", status)
	}
}

// A request from a web page carries its Origin: anything but the
// listener's own is refused, key or no key, on every path.
func TestAdminOrigin(t *testing.T) {
	for _, key := range []string{"", "k3y"} {
		s := New(zerolog.Nop(), prometheus.NewRegistry())
		rec := &recorder{}
		s.EnableAPI(rec, key)
		s.EnableLookup(fakeLookup(nil))
		for _, origin := range []string{"http://evil.example", "http://evil.example:9394", "null", " ",
			"https://127.0.0.1:9394", "http://localhost:9394", "http://127.0.0.1:9395", "http://127.0.0.1",
			"http://127.0.0.1:9394/x", "http://u@127.0.0.1:9394"} {
			status, body := post(s, "/publish", goodPublish, key, "Origin", origin)
			wantError(t, "key "+key+" Origin "+origin, status, body, 403, "Origin")
			for _, path := range []string{"/readyz", "/metrics", "/healthz", "/connections/c_x"} {
				status, body := serve(s, httptest.NewRequest("GET", "http://127.0.0.1:9394"+path, nil), key, "Origin", origin)
				wantError(t, "GET "+path+" Origin "+origin, status, body, 403, "Origin")
			}
		}
		req := httptest.NewRequest("POST", "/publish", strings.NewReader(goodPublish))
		req.Host = "127.0.0.1:9394"
		req.Header.Set("Content-Type", "application/json")
		req.Header.Add("Origin", "http://127.0.0.1:9394")
		req.Header.Add("Origin", "http://evil.example")
		if status, _ := serve(s, req, key); status != 403 {
			t.Errorf("two Origins: %d, want 403", status)
		}
		req = httptest.NewRequest("GET", "http://127.0.0.1:9394/readyz", nil)
		req.Header["Origin"] = []string{""}
		if status, _ := serve(s, req, key); status != 403 {
			t.Errorf("an empty Origin: %d, want 403", status)
		}
		if len(rec.published) != 0 {
			t.Fatalf("published %d messages from refused requests", len(rec.published))
		}
		// The listener's own origin, as the request reached it (a status
		// page served by the listener), is fine.
		for _, o := range [][2]string{{"127.0.0.1:9394", "http://127.0.0.1:9394"}, {"localhost:9394", "HTTP://LOCALHOST:9394"},
			{"[::1]:9394", "http://[::1]:9394"}, {"localhost", "http://localhost:80"}} {
			if status, body := post(s, "/publish", goodPublish, key, "Host", o[0], "Origin", o[1]); status != 200 {
				t.Errorf("Host %s, Origin %s: %d %s", o[0], o[1], status, body)
			}
		}
	}
}

// Without a key, a Host that is not an IP address or localhost is a
// page that reached the listener by DNS rebinding.
func TestAdminHostWithoutKey(t *testing.T) {
	s := New(zerolog.Nop(), prometheus.NewRegistry())
	rec := &recorder{}
	s.EnableAPI(rec, "")
	for _, host := range []string{"evil.example", "evil.example:9394", "127.0.0.1.nip.io:9394", "localhost.evil.example",
		"localhost.:9394", ""} {
		status, body := post(s, "/publish", goodPublish, "", "Host", host)
		wantError(t, "Host "+host, status, body, 403, "Host")
		status, body = serve(s, httptest.NewRequest("GET", "/readyz", nil), "", "Host", host)
		wantError(t, "GET /readyz Host "+host, status, body, 403, "Host")
	}
	if len(rec.published) != 0 {
		t.Fatalf("published %d messages from refused requests", len(rec.published))
	}
	for _, host := range []string{"127.0.0.1:9394", "127.0.0.1", "[::1]:9394", "[::1]", "::1", "localhost", "LocalHost:9394", "10.1.2.3:9394"} {
		if status, body := post(s, "/publish", goodPublish, "", "Host", host); status != 200 {
			t.Errorf("Host %s: %d %s", host, status, body)
		}
	}
}

// With a key, a page cannot know it: any Host will do, but the key is
// still required.
func TestAdminHostWithKey(t *testing.T) {
	s := New(zerolog.Nop(), prometheus.NewRegistry())
	rec := &recorder{}
	s.EnableAPI(rec, "k3y")
	if status, body := post(s, "/publish", goodPublish, "k3y", "Host", "cablecar.internal:9394"); status != 200 {
		t.Errorf("with the key and a DNS name: %d %s", status, body)
	}
	if status, _ := post(s, "/publish", goodPublish, "wrong", "Host", "evil.example"); status != 401 {
		t.Errorf("with a wrong key and a DNS name: %d, want 401", status)
	}
	if len(rec.published) != 1 {
		t.Fatalf("published %d messages, want 1", len(rec.published))
	}
}
