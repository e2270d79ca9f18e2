package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"
)

// maxStdin bounds data read from stdin ("-"): the admin API takes 16 MiB.
const maxStdin = 16 << 20

// data is a message's text: the argument, or stdin for "-".
func (e *env) data(name, arg string) (string, bool) {
	if arg != "-" {
		return arg, true
	}
	b, err := io.ReadAll(io.LimitReader(e.stdin, maxStdin+1))
	switch {
	case err != nil:
		fmt.Fprintf(e.stderr, "cablecar %s: reading stdin: %v\n", name, err)
		return "", false
	case len(b) > maxStdin:
		fmt.Fprintf(e.stderr, "cablecar %s: stdin holds more than %d bytes\n", name, maxStdin)
		return "", false
	case !utf8.Valid(b):
		fmt.Fprintf(e.stderr, "cablecar %s: stdin is not UTF-8 text\n", name)
		return "", false
	}
	return string(b), true
}

func publish(e *env, args []string) int {
	data, ok := e.data("publish", args[1])
	if !ok {
		return ExitUsage
	}
	in := map[string]any{"channel": args[0], "data": data}
	if e.opts.except != "" {
		in["except"] = e.opts.except
	}
	return e.post("publish", "/publish", in, "published to "+args[0])
}

func send(e *env, args []string) int {
	data, ok := e.data("send", args[1])
	if !ok {
		return ExitUsage
	}
	return e.post("send", "/send", map[string]any{"connection": args[0], "data": data}, "sent to "+args[0])
}

func closeVerb(e *env, args []string) int {
	in := map[string]any{"code": e.opts.code}
	if e.opts.reason != "" {
		in["reason"] = e.opts.reason
	}
	what := e.opts.channel
	switch {
	case len(args) == 1 && e.opts.channel != "":
		fmt.Fprintln(e.stderr, "cablecar close: give a connection id or -channel, not both")
		return ExitUsage
	case len(args) == 1:
		in["connection"], what = args[0], args[0]
	case e.opts.channel != "":
		in["channel"] = e.opts.channel
	default:
		fmt.Fprintln(e.stderr, "cablecar close: usage: cablecar close [-code N] [-reason TEXT] <id>, or -channel CHANNEL")
		return ExitUsage
	}
	return e.post("close", "/close", in, fmt.Sprintf("closed %s (%d)", what, e.opts.code))
}

// post makes a verb's POST to the admin API and prints the answer with
// --json, else line.
func (e *env) post(verb, path string, in map[string]any, line string) int {
	a, code, ok := e.call(verb, http.MethodPost, path, in)
	if !ok {
		return code
	}
	if e.opts.json {
		e.stdout.Write(a.body)
		return ExitOK
	}
	fmt.Fprintln(e.stdout, line)
	return ExitOK
}

// connectionInfo is GET /connections/<id>'s answer (SPEC §4).
type connectionInfo struct {
	ID       string   `json:"id"`
	Node     string   `json:"node"`
	Channels []string `json:"channels"`
	Detached bool     `json:"detached"`
}

func connection(e *env, args []string) int {
	a, code, ok := e.call("connection", http.MethodGet, "/connections/"+url.PathEscape(args[0]), nil)
	if !ok {
		return code
	}
	if e.opts.json {
		e.stdout.Write(a.body)
		return ExitOK
	}
	var c connectionInfo
	if err := json.Unmarshal(a.body, &c); err != nil {
		fmt.Fprintf(e.stderr, "cablecar connection: the node's answer is not what SPEC §4 says: %v\n", err)
		return ExitFailed
	}
	where := "on node " + c.Node
	if c.Detached {
		where = "detached, waiting to be restored"
	}
	channels := strings.Join(c.Channels, ", ")
	if channels == "" {
		channels = "(none)"
	}
	fmt.Fprintf(e.stdout, "%s  %s\nchannels: %s\n", c.ID, where, channels)
	return ExitOK
}

// presenceInfo is GET /presence's answer (SPEC §11).
type presenceInfo struct {
	Channel     string `json:"channel"`
	Connections int    `json:"connections"`
	Members     []struct {
		ID          string          `json:"id"`
		Info        json.RawMessage `json:"info"`
		Connections int             `json:"connections"`
	} `json:"members"`
}

func presence(e *env, args []string) int {
	a, err := e.callAdmin(http.MethodGet, "/presence?channel="+url.QueryEscape(args[0]), nil)
	if err == nil && a.status == http.StatusNotFound && !json.Valid(a.body) {
		// The mux's own 404: a node from before SPEC §11.
		fmt.Fprintln(e.stderr, "cablecar presence: this node does not serve GET /presence: it is older than presence (SPEC §11)")
		return ExitFailed
	}
	if code, ok := e.judge("presence", a, err); !ok {
		return code
	}
	if e.opts.json {
		e.stdout.Write(a.body)
		return ExitOK
	}
	var p presenceInfo
	if err := json.Unmarshal(a.body, &p); err != nil {
		fmt.Fprintf(e.stderr, "cablecar presence: the node's answer is not what SPEC §11 says: %v\n", err)
		return ExitFailed
	}
	fmt.Fprintf(e.stdout, "%s: %d present, %d connections\n", p.Channel, len(p.Members), p.Connections)
	for _, m := range p.Members {
		info := ""
		if len(m.Info) > 0 && string(m.Info) != "null" {
			info = "  " + string(m.Info)
		}
		fmt.Fprintf(e.stdout, "  %s  (%d connections)%s\n", m.ID, m.Connections, info)
	}
	return ExitOK
}

func version(e *env, _ []string) int {
	if e.opts.json {
		e.printJSON(map[string]string{"version": e.version})
		return ExitOK
	}
	fmt.Fprintln(e.stdout, "cablecar", e.version)
	return ExitOK
}
