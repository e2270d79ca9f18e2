package config

import (
	"errors"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Error is a configuration problem. Its text is one line:
//
//	proxy.connect_timeout: "5x" is not a duration (examples: 250ms, 5s, 1m) [sidecar.yaml line 12]
type Error struct {
	Key    string // the dotted key, e.g. "proxy.connect_timeout", or "config file"
	Msg    string // what is wrong, quoting the value unless it is secret
	Source string // where the value came from: "f.yaml line 7", "CABLECAR_UPSTREAM", "-listen flag"
}

func (e *Error) Error() string {
	s := e.Key + ": " + e.Msg
	if e.Source != "" {
		s += " [" + e.Source + "]"
	}
	return oneLine(s)
}

// valueError reports raw, the value given for f, as wrong for reason err.
func (f *field) valueError(raw, source string, err error) *Error {
	if errors.Is(err, errNoValue) {
		return &Error{Key: f.key, Source: source,
			Msg: "has no value (leave it out to keep the default, " + f.formatDefault() + ")"}
	}
	return &Error{Key: f.key, Source: source, Msg: f.show(raw) + " " + err.Error()}
}

// show quotes a value for a message. Secrets are never shown, not even in
// part: a near-miss of a key is still most of the key.
func (f *field) show(raw string) string {
	switch {
	case f.secret:
		return "the value (hidden)"
	case strings.Contains(raw, "://"):
		return strconv.Quote(shorten(maskURL(raw)))
	}
	return strconv.Quote(shorten(raw))
}

// shorten keeps a message one readable line even when someone has pasted
// a certificate into the wrong key.
func shorten(s string) string {
	const max = 120
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// oneLine flattens the line breaks that messages from the YAML parser or
// the OS may hold; values are already quoted, so have none.
func oneLine(s string) string {
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
}

// didYouMean is " (did you mean a or b?)" for the suggestions, or "".
func didYouMean(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return " (did you mean " + strings.Join(s, " or ") + "?)"
}

// suggest returns the known names a person writing name most likely
// meant: those within a few typos, or failing that those that end in
// sep+tail (the right key in the wrong section). It suggests nothing
// rather than something far-fetched.
func suggest(name, tail string, known []string, sep string) []string {
	const most = 3
	limit := max(1, len(name)/5)
	best, bestD := []string(nil), limit+1
	for _, k := range known {
		switch d := editDistance(strings.ToLower(name), strings.ToLower(k)); {
		case d < bestD:
			best, bestD = []string{k}, d
		case d == bestD:
			best = append(best, k)
		}
	}
	if len(best) > 0 && len(best) <= most {
		return best
	}
	var same []string
	for _, k := range known {
		if strings.HasSuffix(strings.ToLower(k), strings.ToLower(sep+tail)) || strings.EqualFold(k, tail) {
			same = append(same, k)
		}
	}
	if len(same) > 0 && len(same) <= most {
		sort.Strings(same)
		return same
	}
	return nil
}

// editDistance is the Levenshtein distance between a and b, in bytes
// (keys are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
