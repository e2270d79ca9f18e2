package proxy

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"
)

// forgeries are header names a client may use to pass for Cablecar (SPEC
// §1): Rack servers map "-" and "_" alike to "_" and upcase the name, so
// each of these reaches a Rack app as HTTP_CABLECAR_*.
var forgeries = []string{
	"Cablecar_Claims", "cablecar_connection_id", "CABLECAR-SIGNATURE", "CaBlEcAr_Upgrade",
	"Cablecar-Claims", "cablecar-connection-id", "CABLECAR_SUBSCRIBE", "cablecar_", "Cablecar-",
}

// lookalikes start like Cablecar's headers but are the client's own, and
// must reach the app.
var lookalikes = []string{"Cablecar", "Cablecars-Fan", "X-Cablecar-Claims", "Cablecar.Claims", "Cablecarclaims"}

// isCablecarName is the test's own reading of SPEC §1, kept apart from the
// code's.
func isCablecarName(name string) bool {
	return strings.HasPrefix(strings.ToLower(strings.ReplaceAll(name, "_", "-")), "cablecar-")
}

func TestClientCannotForgeCablecarHeaders(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(echo))
	defer app.Close()
	px := startProxy(t, testConfig(app.URL))

	// Written by hand: Go's client would rewrite the names' case.
	var raw strings.Builder
	raw.WriteString("GET /h HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n")
	for _, name := range append(append([]string{}, forgeries...), lookalikes...) {
		raw.WriteString(name + `: {"sub":"42"}` + "\r\n")
	}
	raw.WriteString("\r\n")
	conn, err := net.Dial("tcp", strings.TrimPrefix(px.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e echoed
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d: %v", resp.StatusCode, err)
	}
	for name, v := range e.Headers {
		if isCablecarName(name) {
			t.Errorf("%s reached the app: %q", name, v)
		}
	}
	for _, name := range lookalikes {
		if _, ok := e.Headers[http.CanonicalHeaderKey(name)]; !ok {
			t.Errorf("%s, the client's own header, did not reach the app", name)
		}
	}
}

// The accept request is built from the client's handshake by
// PrepareHeaders; nothing Cablecar-like the client sent may be in it.
func TestPrepareHeadersDropsForgedCablecarHeaders(t *testing.T) {
	p := New(testConfig("http://127.0.0.1:1"), zerolog.Nop(), prometheus.NewRegistry())
	var ctx fasthttp.RequestCtx
	var raw strings.Builder
	raw.WriteString("GET /cable HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n")
	for _, name := range append(append([]string{}, forgeries...), lookalikes...) {
		raw.WriteString(name + ": forged\r\n")
	}
	raw.WriteString("\r\n")
	if err := ctx.Request.Header.Read(bufio.NewReader(strings.NewReader(raw.String()))); err != nil {
		t.Fatal(err)
	}
	var out fasthttp.RequestHeader
	p.PrepareHeaders(&ctx, &out)
	kept := map[string]bool{}
	for k := range out.All() {
		if isCablecarName(string(k)) {
			t.Errorf("%s is in the accept request", k)
		}
		kept[strings.ToLower(string(k))] = true
	}
	for _, name := range lookalikes {
		if !kept[strings.ToLower(name)] {
			t.Errorf("%s, the client's own header, is not in the accept request", name)
		}
	}
}

// FuzzStripRequestHeaders reads arbitrary header lines as the server
// would and checks, after stripping, that no header whose name with "_"
// read as "-" starts with "cablecar-" is left, and that every other
// header that is not hop-by-hop survives with its value.
//
//	go test -run - -fuzz FuzzStripRequestHeaders ./proxy/
func FuzzStripRequestHeaders(f *testing.F) {
	for i, name := range append(append([]string{}, forgeries...), lookalikes...) {
		f.Add(name, "v", lookalikes[i%len(lookalikes)], forgeries[i%len(forgeries)])
	}
	f.Add("Connection", "Cablecar_Claims, X-Kept", "X-Kept", "1")
	f.Add("cablecar\t_claims", "x", "CABLECAR_", "")
	f.Fuzz(func(t *testing.T, n1, v1, n2, v2 string) {
		raw := "GET / HTTP/1.1\r\nHost: h\r\n" + n1 + ": " + v1 + "\r\n" + n2 + ": " + v2 + "\r\n\r\n"
		var h fasthttp.RequestHeader
		if err := h.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
			return // not a request the server would take
		}
		type field struct{ name, value string }
		var before []field
		connNamed := map[string]bool{}
		for k, v := range h.All() {
			before = append(before, field{string(k), string(v)})
			if strings.EqualFold(string(k), "Connection") {
				for _, tok := range strings.Split(string(v), ",") {
					connNamed[strings.ToLower(strings.TrimSpace(tok))] = true
				}
			}
		}
		stripRequestHeaders(&h)
		after := map[field]bool{}
		for k, v := range h.All() {
			if isCablecarName(string(k)) {
				t.Fatalf("%q survived in %q", k, raw)
			}
			after[field{strings.ToLower(string(k)), string(v)}] = true
		}
		for _, f := range before {
			lower := strings.ToLower(f.name)
			if isCablecarName(f.name) || hopName(lower) || connNamed[lower] {
				continue
			}
			if !after[field{lower, f.value}] {
				t.Fatalf("%s: %q was removed from %q", f.name, f.value, raw)
			}
		}
	})
}

func hopName(lower string) bool {
	for _, name := range hopHeaders {
		if lower == name {
			return true
		}
	}
	return false
}
