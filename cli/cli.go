// Package cli is the binary's verbs: `cablecar publish`, `send`, `close`,
// `connection`, `presence`, `doctor`, `version` and `help`. They read the
// same configuration as the sidecar (config.Parse: -config, CABLECAR_*
// variables, the key flags) and talk to a running node's admin API
// (SPEC §4, §11), or, for doctor, to the app, Redis and the JWKS the
// configuration names. `cablecar` with no verb, or with flags only, runs
// the sidecar: main.go asks Verb first.
//
// Exit codes (docs/cli.md): 0 done; 1 failed (the node could not be
// reached or failed, doctor found a problem); 2 usage (a bad argument, a
// bad config, input the node refused as invalid); 3 not found (the
// connection is open on no node); 4 refused (a missing or wrong
// admin.api_key, or the request was refused as from another origin).
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cablecar/cablecar/config"
)

// Exit codes, the same for every verb.
const (
	ExitOK       = 0
	ExitFailed   = 1
	ExitUsage    = 2
	ExitNotFound = 3
	ExitRefused  = 4
)

// verb is one subcommand.
type verb struct {
	args  string // the positional arguments, for usage
	about string
	run   func(e *env, args []string) int
	// flags adds the verb's own flags to fs.
	flags func(fs *flag.FlagSet, o *options)
	// min and max bound the positional arguments; max -1 is any.
	min, max int
}

var verbs map[string]*verb

// order is the order help lists the verbs in.
var order = []string{"publish", "send", "close", "connection", "presence", "doctor", "version", "help"}

func init() {
	verbs = map[string]*verb{
		"publish": {args: "<channel> <data>", min: 2, max: 2, run: publish,
			about: "publish data to every connection subscribed to channel, on every node (\"-\" reads data from stdin)",
			flags: func(fs *flag.FlagSet, o *options) {
				fs.StringVar(&o.except, "except", "", "leave out this connection `id`")
			}},
		"send": {args: "<id> <data>", min: 2, max: 2, run: send,
			about: "send data to one connection, wherever it is (\"-\" reads data from stdin)"},
		"close": {args: "<id>", min: 0, max: 1, run: closeVerb,
			about: "close one connection (or, with -channel, every connection subscribed to a channel)",
			flags: func(fs *flag.FlagSet, o *options) {
				fs.IntVar(&o.code, "code", 1000, "the close `code`: 1000 or 3000–4999")
				fs.StringVar(&o.reason, "reason", "", "the close `reason` (at most 123 bytes)")
				fs.StringVar(&o.channel, "channel", "", "close every connection subscribed to this `channel` instead")
			}},
		"connection": {args: "<id>", min: 1, max: 1, run: connection,
			about: "where a connection is open and what it is subscribed to (exit 3 when open nowhere)"},
		"presence": {args: "<channel>", min: 1, max: 1, run: presence,
			about: "who is present in channel, across nodes (SPEC §11)"},
		"doctor": {args: "", min: 0, max: 0, run: doctor,
			about: "check the app, the callback secret, Redis, the admin listener and the JWT settings",
			flags: func(fs *flag.FlagSet, o *options) {
				fs.StringVar(&o.path, "path", "/", "the app `path` that accepts WebSockets, for the test accept")
				fs.DurationVar(&o.wait, "wait", 0, "wait this `long` for the app to answer before checking it")
			}},
		"version": {args: "", min: 0, max: 0, run: version, about: "print the version"},
		"help":    {args: "[verb]", min: 0, max: 1, run: help, about: "this help, or one verb's"},
	}
}

// Verb reports whether args (os.Args[1:]) start with a verb, so that main
// runs the CLI instead of the sidecar. Anything else, flags included, is
// the sidecar's.
func Verb(args []string) bool {
	if len(args) == 0 {
		return false
	}
	_, ok := verbs[args[0]]
	return ok
}

// env is what one run of a verb works with.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	environ        []string
	opts           options
	version        string
	cfg            *config.Config
	warnings       []string // from loading the config (unknown CABLECAR_* variables)
	cfgErr         error    // doctor reports a bad config; the other verbs stop on it
}

// options are the flags every verb takes, plus the verbs' own.
type options struct {
	configPath, listen, upstream string
	admin                        string // -admin: the admin API's URL, over the config
	json                         bool
	timeout                      durationFlag

	except, reason, channel, path string
	code                          int
	wait                          time.Duration
}

// Run runs the verb args[0] with the rest of args and returns the exit
// code. version is the binary's (sidecar.Version).
func Run(args []string, environ []string, stdin io.Reader, stdout, stderr io.Writer, version string) int {
	name := args[0]
	v := verbs[name]
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr, environ: environ, version: version}
	fs := flagSet(name, v, &e.opts)
	pos, err := parseInterspersed(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		verbUsage(stdout, name, v, fs)
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "cablecar %s: %v (cablecar help %s)\n", name, err, name)
		return ExitUsage
	}
	if len(pos) < v.min || (v.max >= 0 && len(pos) > v.max) {
		fmt.Fprintf(stderr, "cablecar %s: usage: cablecar %s [flags] %s (cablecar help %s)\n", name, name, v.args, name)
		return ExitUsage
	}
	if name != "help" && name != "version" {
		e.cfg, e.warnings, e.cfgErr = loadConfig(e.opts, environ)
		if e.cfgErr != nil && name != "doctor" {
			fmt.Fprintf(stderr, "cablecar %s: %v\n", name, e.cfgErr)
			return ExitUsage
		}
	}
	return v.run(e, pos)
}

func flagSet(name string, v *verb, o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("cablecar "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	o.timeout = durationFlag(defaultTimeout)
	if name != "help" {
		fs.BoolVar(&o.json, "json", false, "print the result as JSON, for scripts")
	}
	if name != "help" && name != "version" {
		fs.StringVar(&o.configPath, "config", "", "read the YAML config `file` (default: CABLECAR_CONFIG, else none)")
		fs.StringVar(&o.listen, "listen", "", "the client-facing `address` (key listen)")
		fs.StringVar(&o.upstream, "upstream", "", "the app's `url` (key upstream)")
		fs.StringVar(&o.admin, "admin", "", "the admin API's `url` (default: CABLECAR_ADMIN_URL, else http:// + admin.listen)")
		fs.Var(&o.timeout, "timeout", "give up on each request after this `long`")
	}
	if v.flags != nil {
		v.flags(fs, o)
	}
	return fs
}

// parseInterspersed parses flags wherever they are among the positional
// arguments (`cablecar close ID -code 4000`), which the flag package alone
// stops at; after "--" everything is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			// The flag package stopped at "--" and dropped it.
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// loadConfig reads the configuration as the sidecar would, with the key
// flags given to the verb.
func loadConfig(o options, environ []string) (*config.Config, []string, error) {
	var args []string
	if o.configPath != "" {
		args = append(args, "-config", o.configPath)
	}
	if o.listen != "" {
		args = append(args, "-listen", o.listen)
	}
	if o.upstream != "" {
		args = append(args, "-upstream", o.upstream)
	}
	cfg, flags, err := config.Parse(args, environ, nil)
	return cfg, flags.Warnings, err
}

func help(e *env, args []string) int {
	if len(args) == 1 {
		v, ok := verbs[args[0]]
		if !ok {
			fmt.Fprintf(e.stderr, "cablecar help: no verb %q\n", args[0])
			return ExitUsage
		}
		var o options
		verbUsage(e.stdout, args[0], v, flagSet(args[0], v, &o))
		return ExitOK
	}
	Usage(e.stdout)
	return ExitOK
}

// Usage writes the list of verbs; `cablecar -h` adds it to the sidecar's.
func Usage(w io.Writer) {
	fmt.Fprint(w, "Usage: cablecar [flags]            run the sidecar (cablecar -h for its flags)\n")
	fmt.Fprint(w, "       cablecar <verb> [flags] [args]\n\nVerbs:\n")
	for _, name := range order {
		v := verbs[name]
		fmt.Fprintf(w, "  %-28s %s\n", strings.TrimSpace(name+" "+v.args), v.about)
	}
	fmt.Fprint(w, `
Every verb reads the sidecar's configuration (-config FILE, CABLECAR_* variables)
and talks to the admin API at admin.listen with admin.api_key; -admin URL or
CABLECAR_ADMIN_URL points it elsewhere. -json prints JSON for scripts.

Exit codes: 0 done, 1 failed (node unreachable or failing; doctor found a
problem), 2 usage (bad arguments, bad config, input refused as invalid),
3 not found (no node holds the connection), 4 refused (wrong or missing
admin.api_key). See docs/cli.md.
`)
}

func verbUsage(w io.Writer, name string, v *verb, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: cablecar %s [flags] %s\n\n%s.\n\nFlags:\n", name, v.args, v.about)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}
