package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/cablecar/cablecar/pubsub"
)

// A doctor's finding: one line, what it found and what to change.
type finding struct {
	Check  string `json:"check"`  // config, app, signature, broker, admin, jwt
	Status string `json:"status"` // ok, warn, problem
	Found  string `json:"found"`
	Fix    string `json:"fix,omitempty"`
}

const (
	statusOK      = "ok"
	statusWarn    = "warn"
	statusProblem = "problem"
)

// doctor checks what the configuration points at, one finding per line,
// and exits 1 when any is a problem. It judges only: it changes nothing,
// and the test accept it sends the app opens no connection.
func doctor(e *env, _ []string) int {
	d := &doctorRun{e: e}
	d.config()
	if e.cfgErr == nil {
		d.app()
		d.broker()
		d.admin()
		d.jwt()
	}
	if e.opts.json {
		e.printJSON(d.findings)
	}
	problems, warnings := 0, 0
	for _, f := range d.findings {
		switch f.Status {
		case statusProblem:
			problems++
		case statusWarn:
			warnings++
		}
	}
	if !e.opts.json {
		fmt.Fprintf(e.stdout, "cablecar doctor: %s, %s\n", plural(problems, "problem"), plural(warnings, "warning"))
	}
	if problems > 0 {
		return ExitFailed
	}
	return ExitOK
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

type doctorRun struct {
	e        *env
	findings []finding
}

func (d *doctorRun) add(check, status, found, fix string) {
	f := finding{Check: check, Status: status, Found: found, Fix: fix}
	d.findings = append(d.findings, f)
	if d.e.opts.json {
		return
	}
	line := fmt.Sprintf("%-7s %-9s %s", f.Status, f.Check, f.Found)
	if f.Fix != "" {
		line += " → " + f.Fix
	}
	fmt.Fprintln(d.e.stdout, line)
}

func (d *doctorRun) timeout() time.Duration { return time.Duration(d.e.opts.timeout) }

func (d *doctorRun) config() {
	if d.e.cfgErr != nil {
		d.add("config", statusProblem, d.e.cfgErr.Error(), "fix that key; cablecar -check -config FILE shows the effective config")
		return
	}
	src := "no config file, defaults and CABLECAR_* variables"
	if p := d.e.opts.configPath; p != "" {
		src = p
	} else if p := lookupEnv(d.e.environ, "CABLECAR_CONFIG"); p != "" {
		src = p + " (CABLECAR_CONFIG)"
	}
	d.add("config", statusOK, "read "+src, "")
	for _, w := range d.e.warnings {
		d.add("config", statusWarn, w, "a misspelt variable is ignored: correct or remove it")
	}
}

// broker pings Redis when broker.url names it.
func (d *doctorRun) broker() {
	raw := d.e.cfg.Broker.URL
	if raw == "" {
		d.add("broker", statusOK, "in memory: one node (set broker.url to run several as one)", "")
		return
	}
	shown := redactURL(raw)
	c, _, err := pubsub.NewRedisClient(raw)
	if err != nil {
		d.add("broker", statusProblem, fmt.Sprintf("broker.url %s: %v", shown, err), "fix broker.url (CABLECAR_BROKER_URL)")
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout())
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		d.add("broker", statusProblem, fmt.Sprintf("Redis at %s does not answer PING: %v", shown, err),
			"start Redis there, or fix broker.url (CABLECAR_BROKER_URL)")
		return
	}
	d.add("broker", statusOK, "Redis at "+shown+" answers PING", "")
}

// admin checks the admin listener of a running node: that it answers,
// and that admin.api_key is the one it wants. No node running is only a
// warning: doctor is also run before the sidecar starts.
func (d *doctorRun) admin() {
	base, err := d.e.adminURL()
	if err != nil {
		d.add("admin", statusWarn, err.Error(), "the CLI verbs and probes need the admin listener")
		return
	}
	client := &http.Client{Timeout: d.timeout(), Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	resp, err := client.Get(base + "/healthz")
	if err != nil {
		d.add("admin", statusWarn, fmt.Sprintf("no Cablecar answers at %s (%v)", base, unwrapURLError(err)),
			"start cablecar; the verbs need it running")
		return
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		d.add("admin", statusProblem, fmt.Sprintf("%s/healthz answered %d, not 200: something else listens there", base, resp.StatusCode),
			"give admin.listen a free port")
		return
	}
	// A well-formed id no node holds: 404 says the key was taken.
	a, err := d.e.callAdmin(http.MethodGet, "/connections/"+pubsub.NewConnectionID(pubsub.NewNodeID()), nil)
	switch {
	case err != nil:
		d.add("admin", statusProblem, err.Error(), "")
	case a.status == http.StatusUnauthorized:
		d.add("admin", statusProblem, "the admin API at "+base+" refused admin.api_key: "+a.errorText(),
			"give the CLI the node's admin.api_key (CABLECAR_ADMIN_API_KEY)")
	case a.status == http.StatusNotFound || a.status == http.StatusOK:
		d.add("admin", statusOK, "the admin API at "+base+" answers, and takes this admin.api_key", "")
	default:
		d.add("admin", statusWarn, fmt.Sprintf("the admin API at %s answered a lookup %d: %s", base, a.status, a.errorText()), "")
	}
}

// jwt checks the JWT settings: an HMAC secret long enough to resist a
// guess, and a JWKS that can be fetched and holds keys.
func (d *doctorRun) jwt() {
	j := d.e.cfg.Auth.JWT
	if len(j.HMACSecret) == 0 && j.JWKSURL == "" {
		d.add("jwt", statusOK, "off: handshakes are not checked for a token before the app is asked", "")
		return
	}
	for i, s := range j.HMACSecret {
		if len(s) < 32 {
			d.add("jwt", statusWarn, fmt.Sprintf("auth.jwt.hmac_secret entry %d is %d bytes: short enough to guess", i+1, len(s)),
				"use at least 32 random bytes (openssl rand -hex 32)")
		}
	}
	if len(j.HMACSecret) > 0 {
		d.add("jwt", statusOK, fmt.Sprintf("HMAC tokens verified with %d secret(s)", len(j.HMACSecret)), "")
	}
	if j.JWKSURL != "" {
		d.jwks(j.JWKSURL)
	}
	if !j.Required {
		d.add("jwt", statusOK, "auth.jwt.required is false: a handshake without a token still reaches the app, which decides", "")
	}
}

// jwks fetches the key set as the sidecar will and counts its keys.
func (d *doctorRun) jwks(raw string) {
	shown := redactURL(raw)
	client := &http.Client{Timeout: d.timeout()}
	resp, err := client.Get(raw)
	if err != nil {
		d.add("jwt", statusProblem, fmt.Sprintf("cannot fetch the JWKS at %s: %v", shown, unwrapURLError(err)),
			"fix auth.jwt.jwks_url, or let this host reach it")
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil || resp.StatusCode != http.StatusOK {
		d.add("jwt", statusProblem, fmt.Sprintf("the JWKS at %s answered %d", shown, resp.StatusCode), "fix auth.jwt.jwks_url")
		return
	}
	var set struct {
		Keys []struct {
			Kty string `json:"kty"`
			Use string `json:"use"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		d.add("jwt", statusProblem, fmt.Sprintf("the JWKS at %s is not a JSON key set: %v", shown, err),
			"auth.jwt.jwks_url must point at the issuer's JWKS (often /.well-known/jwks.json)")
		return
	}
	usable := 0
	for _, k := range set.Keys {
		if (k.Kty == "RSA" || k.Kty == "EC" || k.Kty == "OKP") && (k.Use == "" || k.Use == "sig") {
			usable++
		}
	}
	if usable == 0 {
		d.add("jwt", statusProblem, fmt.Sprintf("the JWKS at %s holds no signing key (%d keys in all)", shown, len(set.Keys)),
			"point auth.jwt.jwks_url at the issuer's signing keys")
		return
	}
	d.add("jwt", statusOK, fmt.Sprintf("the JWKS at %s holds %d signing key(s)", shown, usable), "")
}

// redactURL hides a URL's password and query for printing.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.RawQuery != "" {
		u.RawQuery = "…"
	}
	return strings.Replace(u.Redacted(), "%E2%80%A6", "…", 1)
}
