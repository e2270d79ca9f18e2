package proxy

import (
	"bytes"
	"net/url"
	"strings"
)

// sensitiveWords are parts of query parameter names whose values are never
// logged, in the spirit of Rails' filter_parameters defaults.
var sensitiveWords = []string{"token", "secret", "passw", "key", "auth", "sig", "session", "jwt", "crypt", "otp", "code", "salt", "cert"}

const filtered = "[FILTERED]"

func sensitiveSet(extra []string) map[string]bool {
	m := make(map[string]bool, len(extra))
	for _, name := range extra {
		m[strings.ToLower(name)] = true
	}
	return m
}

// redactQuery appends query to dst with the value of every sensitive
// parameter replaced by [FILTERED]. Names are compared after unescaping, so
// %74oken is caught as token.
func redactQuery(query []byte, extra map[string]bool, dst []byte) []byte {
	for i := 0; ; i++ {
		pair, rest, more := bytes.Cut(query, []byte{'&'})
		query = rest
		if i > 0 {
			dst = append(dst, '&')
		}
		dst = redactPair(dst, pair, extra)
		if !more {
			return dst
		}
	}
}

// redactPair appends one '&'-separated pair. Some parsers (Rack 2, and the
// old HTML advice) also split pairs at ';', so x=1;token=… holds a token
// for them: from a sensitive name after a ';', the rest of the pair is
// filtered, as it is all value to a parser that splits at '&' alone.
func redactPair(dst, pair []byte, extra map[string]bool) []byte {
	for start := 0; ; {
		piece := pair[start:]
		end := bytes.IndexByte(piece, ';')
		if end >= 0 {
			piece = piece[:end]
		}
		if name, _, hasValue := bytes.Cut(piece, []byte{'='}); hasValue && isSensitive(name, extra) {
			dst = append(dst, pair[:start+len(name)+1]...)
			return append(dst, filtered...)
		}
		if end < 0 {
			return append(dst, pair...)
		}
		start += end + 1
	}
}

func isSensitive(name []byte, extra map[string]bool) bool {
	n, err := url.QueryUnescape(string(name))
	if err != nil {
		return true // cannot tell what it is: do not log it
	}
	n = strings.ToLower(n)
	if extra[n] {
		return true
	}
	for _, w := range sensitiveWords {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}
