package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/pubsub"
)

// notTheSecret signs the deliberately forged test accept: an app that
// takes it does not check signatures.
const notTheSecret = "cablecar-doctor: not the callback secret"

// appClient talks to the upstream as the sidecar does: TCP or a unix
// socket, no proxy from the environment.
func (d *doctorRun) appClient() (*http.Client, string) {
	up := d.e.cfg.Upstream
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	base := up.String()
	if up.Network == "unix" {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", up.Address)
		}
		base = "http://localhost"
	}
	return &http.Client{Transport: tr, Timeout: d.e.cfg.Callback.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, base
}

// app checks that the app answers, then how it takes a signed accept.
func (d *doctorRun) app() {
	client, base := d.appClient()
	up := d.e.cfg.Upstream.String()
	path := d.e.cfg.Proxy.HealthPath
	if path == "" {
		path = "/"
	}
	deadline := time.Now().Add(d.e.opts.wait)
	var resp *http.Response
	var err error
	for {
		resp, err = client.Get(base + path)
		if err == nil || !time.Now().Before(deadline) {
			break
		}
		// -wait: make run starts the app and Cablecar side by side.
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		d.add("app", statusProblem, fmt.Sprintf("nothing answers at %s: %v", up, unwrapURLError(err)),
			"start the app there (puma -b tcp://127.0.0.1:3001 config.ru, or bin/rails server -b 127.0.0.1 -p 3001), or fix upstream")
		return
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		d.add("app", statusWarn, fmt.Sprintf("the app at %s answers GET %s with %d", up, path, resp.StatusCode),
			"look at the app's log; /readyz counts 5xx on proxy.health_path as not ready")
	} else {
		d.add("app", statusOK, fmt.Sprintf("the app answers at %s (GET %s: %d)", up, path, resp.StatusCode), "")
	}
	d.signature(client, base)
}

// acceptAnswer is how the app answered one test accept.
type acceptAnswer struct {
	status int
	accept string // Cablecar-Accept
	body   string // its first line, trimmed
}

func (a acceptAnswer) accepted() bool {
	return a.status >= 200 && a.status < 300 && strings.EqualFold(a.accept, "websocket")
}

// signatureRefusal: the gem's 401 names the header it refused (and so
// should any app that follows docs/websockets.md).
func (a acceptAnswer) signatureRefusal() bool {
	return a.status == http.StatusUnauthorized && strings.Contains(strings.ToLower(a.body), "cablecar-signature")
}

// noSecret: the gem was given no secret (CABLECAR_CALLBACK_SECRET unset
// when it was first needed).
func (a acceptAnswer) noSecret() bool {
	return a.status == http.StatusInternalServerError && strings.Contains(a.body, "CABLECAR_CALLBACK_SECRET")
}

func (a acceptAnswer) String() string {
	s := fmt.Sprint(a.status)
	if a.body != "" {
		s += fmt.Sprintf(" %q", a.body)
	}
	return s
}

// testAccept sends what the sidecar sends for a handshake on path (SPEC
// §2), signed by signer exactly as callback.Client.Accept signs it. It
// opens nothing: no open event ever follows.
func (d *doctorRun) testAccept(client *http.Client, base, path string, signer *auth.Signer) (acceptAnswer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d.e.cfg.Callback.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return acceptAnswer{}, err
	}
	req.Host = d.clientHost()
	id := pubsub.NewConnectionID(pubsub.NewNodeID())
	req.Header.Set("Cablecar-Upgrade", "websocket")
	req.Header.Set("Cablecar-Connection-Id", id)
	req.Header.Set("User-Agent", "cablecar-doctor")
	if signer.Enabled() {
		req.Header.Set(auth.SignatureHeader, signer.Sign(time.Now(), auth.AcceptPayload(req.URL.RequestURI(), id, "")))
	}
	resp, err := client.Do(req)
	if err != nil {
		return acceptAnswer{}, unwrapURLError(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if len(line) > 160 {
		line = line[:160] + "…"
	}
	return acceptAnswer{status: resp.StatusCode, accept: resp.Header.Get("Cablecar-Accept"), body: line}, nil
}

// clientHost is the Host a browser would send to Cablecar's listen
// address: the app sees the client's Host (Rails' host authorization
// allows localhost in development).
func (d *doctorRun) clientHost() string {
	host, port, err := net.SplitHostPort(d.e.cfg.Listen)
	if err != nil {
		return "localhost"
	}
	if host == "" || host == "0.0.0.0" || host == "::" || host == "127.0.0.1" {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

// signature sends the app a test accept signed as the sidecar signs, and
// one signed with another secret, and tells the four cases apart: it
// verifies and the secret matches; it refused the right signature (wrong
// secret); it takes any signature (does not check); it does not speak the
// contract on this path at all.
func (d *doctorRun) signature(client *http.Client, base string) {
	path := d.e.opts.path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	secrets := d.e.cfg.Callback.Secret
	signed := auth.NewSigner(secrets).Enabled()
	good, err := d.testAccept(client, base, path, auth.NewSigner(secrets))
	if err != nil {
		d.add("signature", statusProblem, fmt.Sprintf("the test accept on %s failed: %v", path, err), "look at the app's log")
		return
	}
	forged, err := d.testAccept(client, base, path, auth.NewSigner([]string{notTheSecret}))
	if err != nil {
		d.add("signature", statusProblem, fmt.Sprintf("the forged test accept on %s failed: %v", path, err), "look at the app's log")
		return
	}
	const same = "give Cablecar and the app the same CABLECAR_CALLBACK_SECRET"
	switch {
	case good.noSecret():
		d.add("signature", statusProblem, "the app has no callback secret: it answered "+good.String(),
			"set CABLECAR_CALLBACK_SECRET in the app's environment to Cablecar's callback.secret")
	case good.signatureRefusal() && !signed:
		d.add("signature", statusProblem, "the app verifies signatures, but Cablecar has no callback.secret, so the app refuses every handshake: "+good.String(),
			"set CABLECAR_CALLBACK_SECRET for both Cablecar and the app")
	case good.signatureRefusal() && strings.Contains(strings.ToLower(good.body), "stale"):
		d.add("signature", statusProblem, "the app refused the signature's time: its clock and this host's differ: "+good.String(),
			"synchronise the clocks (NTP)")
	case good.signatureRefusal():
		d.add("signature", statusProblem, "the app refused: wrong secret: "+good.String(), same)
	case forged.signatureRefusal():
		d.add("signature", statusOK, "the app verifies signatures and the secret matches", "")
		d.pathNote(path, good)
	case forged.accepted() && signed:
		d.add("signature", statusProblem, "the app does not check signatures: it accepted a test accept signed with another secret",
			"use Cablecar::Middleware (it checks), or verify Cablecar-Signature as docs/websockets.md says")
	case forged.accepted():
		d.add("signature", statusWarn, "callbacks are unsigned (no callback.secret) and the app takes them: anyone who reaches the app can forge one",
			"set CABLECAR_CALLBACK_SECRET for both Cablecar and the app")
	case !good.accepted() && (good.status < 300 || good.status == http.StatusNotFound || good.status == http.StatusMethodNotAllowed):
		d.add("signature", statusProblem, fmt.Sprintf("the app is not using the gem or the contract at %s: it answered %s, without Cablecar-Accept and without checking the signature", path, good),
			"mount Cablecar::Middleware (config.ru: use Cablecar::Middleware; Rails: bin/rails generate cablecar:install), or give -path the path your WebSockets use")
	case good.accepted():
		d.add("signature", statusOK, "the app accepted the signed test accept and refused the forged one ("+forged.String()+"): it verifies and the secret matches", "")
	default:
		d.add("signature", statusWarn, fmt.Sprintf("the app refused both test accepts on %s (%s; forged: %s) without naming Cablecar-Signature: it may want a user, or check signatures with another secret", path, good, forged),
			"give -path a WebSocket path that accepts without a cookie or token; "+same)
	}
}

// pathNote says what a verified test accept reached: the app's own
// answer, which need not be an accept (a real client brings a cookie or a
// token).
func (d *doctorRun) pathNote(path string, good acceptAnswer) {
	switch {
	case good.accepted():
		d.add("signature", statusOK, "the app accepts a WebSocket on "+path, "")
	case good.status == http.StatusNotFound || (good.status >= 200 && good.status < 300):
		d.add("signature", statusWarn, fmt.Sprintf("no WebSocket on %s: the app answered %s without accepting", path, good),
			"give -path the path your WebSockets use, to check that one")
	default:
		d.add("signature", statusOK, fmt.Sprintf("the app's own code refused the test accept on %s: %s (a real client brings its cookie or token)", path, good), "")
	}
}
