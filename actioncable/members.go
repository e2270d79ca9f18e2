package actioncable

import (
	"encoding/json"
	"unicode/utf8"
)

// The common command ({"command":"subscribe","identifier":"…"}) and the
// common identifier ({"channel":"…","signed_stream_name":"…"}) are read
// without decoding them into a map: a subscribe burst (a Turbo page's
// thousands of viewers reconnecting) otherwise leaves kilobytes of garbage
// per connection, which the heap keeps as fragmentation long after. What
// the scan cannot read exactly as encoding/json would (a key with an
// escape, more members than it holds) goes the slow way, so both ways give
// the same result (FuzzMembersAgree).

// maxMembers is how many members the scan holds; an object with more goes
// the slow way.
const maxMembers = 8

type member struct{ key, value []byte }

// scanMembers reads the members of the JSON object data into out, in
// order, each value's raw text aliasing data. It reports false when data
// is not a valid JSON object, a key holds an escape or a byte that is not
// printable ASCII, or there are more than maxMembers members.
func scanMembers(data []byte, out *[maxMembers]member) (int, bool) {
	if !json.Valid(data) {
		return 0, false
	}
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return 0, false
	}
	n := 0
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return 0, true
	}
	for {
		// Valid JSON: a key string, a colon, a value, then , or }.
		keyEnd, ok := plainStringEnd(data, i)
		if !ok || n == maxMembers {
			return 0, false
		}
		key := data[i+1 : keyEnd]
		i = skipSpace(data, keyEnd+1) + 1 // past ':'
		i = skipSpace(data, i)
		end := valueEnd(data, i)
		out[n] = member{key: key, value: data[i:end]}
		n++
		i = skipSpace(data, end)
		if data[i] == '}' {
			return n, true
		}
		i = skipSpace(data, i+1) // past ','
	}
}

func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// plainStringEnd is the index of the closing quote of the string starting
// at data[i], when it holds only printable ASCII and no escape.
func plainStringEnd(data []byte, i int) (int, bool) {
	if data[i] != '"' {
		return 0, false
	}
	for j := i + 1; j < len(data); j++ {
		switch c := data[j]; {
		case c == '"':
			return j, true
		case c == '\\' || c < 0x20 || c >= 0x7f:
			return 0, false
		}
	}
	return 0, false
}

// valueEnd is the index just past the valid JSON value starting at data[i].
func valueEnd(data []byte, i int) int {
	switch data[i] {
	case '"':
		return stringEnd(data, i) + 1
	case '{', '[':
		depth := 0
		for j := i; j < len(data); j++ {
			switch data[j] {
			case '"':
				j = stringEnd(data, j)
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(data)
	default: // a number, true, false or null
		j := i
		for j < len(data) {
			switch data[j] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return j
			}
			j++
		}
		return j
	}
}

// stringEnd is the index of the closing quote of the (valid) string
// starting at data[i].
func stringEnd(data []byte, i int) int {
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			j++
		case '"':
			return j
		}
	}
	return len(data)
}

// plainString decodes a JSON string value that holds neither an escape nor
// invalid UTF-8 nor a control character (the one copy is the result);
// false sends the caller to encoding/json.
func plainString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", false
	}
	body := raw[1 : len(raw)-1]
	for _, c := range body {
		if c == '\\' || c < 0x20 {
			return "", false
		}
	}
	if !utf8.Valid(body) {
		return "", false
	}
	return string(body), true
}
