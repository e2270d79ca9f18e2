package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// defaultTimeout bounds each request a verb makes (-timeout).
const defaultTimeout = 10 * time.Second

// maxAnswer bounds what is read of an answer.
const maxAnswer = 4 << 20

// durationFlag is a time.Duration flag.
type durationFlag time.Duration

func (d *durationFlag) String() string { return time.Duration(*d).String() }

func (d *durationFlag) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a duration such as 5s", s)
	}
	*d = durationFlag(v)
	return nil
}

// adminURL is where the admin API is: -admin, else CABLECAR_ADMIN_URL
// (the gem's variable for the same thing), else http:// + admin.listen,
// its wildcard host (every interface) asked on loopback.
func (e *env) adminURL() (string, error) {
	raw := e.opts.admin
	if raw == "" {
		raw = lookupEnv(e.environ, "CABLECAR_ADMIN_URL")
	}
	if raw != "" {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", fmt.Errorf("admin URL %q is not an http:// URL", raw)
		}
		return strings.TrimRight(raw, "/"), nil
	}
	listen := e.cfg.Admin.Listen
	if listen == "" {
		return "", errors.New("admin.listen is empty: this node has no admin listener (set it, or give -admin URL)")
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("admin.listen %q: %v", listen, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

func lookupEnv(environ []string, name string) string {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

// answer is the admin API's reply to one call.
type answer struct {
	status int
	body   []byte
}

// errorText is the API's {"error": "…"}, or the body as it is.
func (a answer) errorText() string {
	var out struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(a.body, &out) == nil && out.Error != "" {
		return out.Error
	}
	return strings.TrimSpace(string(a.body))
}

// callAdmin makes one admin API call: a JSON POST when in is not nil,
// else a GET. A failure to reach the node is an error; any answer is not.
func (e *env) callAdmin(method, path string, in any) (answer, error) {
	base, err := e.adminURL()
	if err != nil {
		return answer{}, err
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return answer{}, err
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(e.opts.timeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return answer{}, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key := e.cfg.Admin.APIKey; key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}).Do(req)
	if err != nil {
		return answer{}, fmt.Errorf("cannot reach the admin API at %s (is cablecar running? -admin or CABLECAR_ADMIN_URL point elsewhere): %w", base, unwrapURLError(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return answer{}, fmt.Errorf("reading the answer of %s%s: %w", base, path, err)
	}
	return answer{status: resp.StatusCode, body: b}, nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// call makes an admin call and, unless it succeeded, says why on stderr
// and returns the exit code for it; ok is true on a 2xx answer.
func (e *env) call(name, method, path string, in any) (answer, int, bool) {
	a, err := e.callAdmin(method, path, in)
	code, ok := e.judge(name, a, err)
	return a, code, ok
}

// judge says on stderr why a call failed and returns its exit code; ok is
// true on a 2xx answer.
func (e *env) judge(name string, a answer, err error) (code int, ok bool) {
	if err != nil {
		fmt.Fprintf(e.stderr, "cablecar %s: %v\n", name, err)
		return ExitFailed, false
	}
	if a.status >= 200 && a.status < 300 {
		return ExitOK, true
	}
	code = exitFor(a.status)
	msg := a.errorText()
	if code == ExitRefused && a.status == http.StatusUnauthorized {
		msg += " (the key comes from admin.api_key: CABLECAR_ADMIN_API_KEY or the config file)"
	}
	if e.opts.json {
		e.printJSON(map[string]any{"error": msg, "status": a.status})
	}
	fmt.Fprintf(e.stderr, "cablecar %s: %d: %s\n", name, a.status, msg)
	return code, false
}

// exitFor maps the admin API's failing status to an exit code.
func exitFor(status int) int {
	switch {
	case status == http.StatusNotFound:
		return ExitNotFound
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return ExitRefused
	case status >= 400 && status < 500:
		return ExitUsage
	}
	return ExitFailed
}

func (e *env) printJSON(v any) {
	enc := json.NewEncoder(e.stdout)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}
