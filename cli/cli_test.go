package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// run is Run with buffers and a clean environment plus environ.
func run(t *testing.T, environ []string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Run(args, environ, strings.NewReader(stdin), &out, &errOut, "v-test")
	return code, out.String(), errOut.String()
}

func TestVerb(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"-config", "x.yaml"}, false},
		{[]string{"-version"}, false},
		{[]string{"publish", "a", "b"}, true},
		{[]string{"doctor"}, true},
		{[]string{"frobnicate"}, false}, // the sidecar refuses it, with its usage
	} {
		if got := Verb(tc.args); got != tc.want {
			t.Errorf("Verb(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}

func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		wantPos  []string
		wantCode int
	}{
		{[]string{"id", "-code", "4000"}, []string{"id"}, 4000},
		{[]string{"-code", "4001", "id"}, []string{"id"}, 4001},
		{[]string{"id", "--", "-x", "-code"}, []string{"id", "-x", "-code"}, 1000},
		{[]string{"--", "-x"}, []string{"-x"}, 1000},
		{[]string{"-", "-code=3000"}, []string{"-"}, 3000},
	} {
		var o options
		fs := flagSet("close", verbs["close"], &o)
		pos, err := parseInterspersed(fs, tc.args)
		if err != nil || strings.Join(pos, "|") != strings.Join(tc.wantPos, "|") || o.code != tc.wantCode {
			t.Errorf("%q: %q code %d err %v; want %q code %d", tc.args, pos, o.code, err, tc.wantPos, tc.wantCode)
		}
	}
}

func TestUsageAndConfigErrorsExit2(t *testing.T) {
	if code, _, errOut := run(t, nil, "", "publish", "only-a-channel"); code != ExitUsage || !strings.Contains(errOut, "usage: cablecar publish") {
		t.Errorf("missing argument: %d %q", code, errOut)
	}
	if code, _, errOut := run(t, nil, "", "send", "-nope", "a", "b"); code != ExitUsage || !strings.Contains(errOut, "-nope") {
		t.Errorf("unknown flag: %d %q", code, errOut)
	}
	code, _, errOut := run(t, []string{"CABLECAR_ADMIN_LISTEN=nonsense"}, "", "connection", "c_x")
	if code != ExitUsage || !strings.Contains(errOut, "admin.listen") {
		t.Errorf("bad config: %d %q", code, errOut)
	}
	if code, out, _ := run(t, nil, "", "help", "presence"); code != ExitOK || !strings.Contains(out, "cablecar presence") {
		t.Errorf("help presence: %d %q", code, out)
	}
	if code, out, _ := run(t, nil, "", "version"); code != ExitOK || out != "cablecar v-test\n" {
		t.Errorf("version: %d %q", code, out)
	}
}

// fakeAdmin answers as SPEC §4 and §11 say, recording what it was asked.
func fakeAdmin(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestPresence(t *testing.T) {
	url := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/presence" || r.URL.Query().Get("channel") != "room:1" || r.Header.Get("Authorization") != "Bearer k" {
			w.WriteHeader(http.StatusTeapot)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"channel":"room:1","connections":3,"members":[{"id":"user-42","info":{"name":"Ann"},"connections":2}]}`))
	})
	env := []string{"CABLECAR_ADMIN_URL=" + url, "CABLECAR_ADMIN_API_KEY=k"}
	code, out, errOut := run(t, env, "", "presence", "room:1")
	if code != ExitOK || out != "room:1: 1 present, 3 connections\n  user-42  (2 connections)  {\"name\":\"Ann\"}\n" {
		t.Errorf("presence: %d %q %q", code, out, errOut)
	}
	code, out, _ = run(t, env, "", "presence", "-json", "room:1")
	var p presenceInfo
	if code != ExitOK || json.Unmarshal([]byte(out), &p) != nil || p.Members[0].ID != "user-42" {
		t.Errorf("presence -json: %d %q", code, out)
	}
}

func TestPresenceOnAnOlderNode(t *testing.T) {
	url := fakeAdmin(t, http.NotFound)
	code, _, errOut := run(t, []string{"CABLECAR_ADMIN_URL=" + url}, "", "presence", "room:1")
	if code != ExitFailed || !strings.Contains(errOut, "older than presence") {
		t.Errorf("%d %q", code, errOut)
	}
}

func TestExitCodesFromTheAPI(t *testing.T) {
	status := 0
	var got map[string]any
	url := fakeAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		json.NewDecoder(r.Body).Decode(&got)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write([]byte(`{"error":"said the node"}`))
	})
	env := []string{"CABLECAR_ADMIN_URL=" + url}
	for st, want := range map[int]int{200: ExitOK, 400: ExitUsage, 415: ExitUsage, 401: ExitRefused, 403: ExitRefused,
		404: ExitNotFound, 503: ExitFailed, 500: ExitFailed} {
		status = st
		code, _, errOut := run(t, env, "data from stdin", "publish", "-except", "c_other", "room:1", "-")
		if code != want {
			t.Errorf("%d: exit %d, want %d (%q)", status, code, want, errOut)
		}
		if status != 200 && !strings.Contains(errOut, "said the node") {
			t.Errorf("%d: stderr %q does not carry the node's error", status, errOut)
		}
	}
	if got["data"] != "data from stdin" || got["except"] != "c_other" || got["channel"] != "room:1" {
		t.Errorf("the API got %v", got)
	}
}
