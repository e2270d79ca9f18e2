package auth

import (
	"net/url"
	"strings"
)

// Source is where in a handshake a token was found.
type Source uint8

// The sources, in the order ExtractToken looks at them.
const (
	SourceHeader   Source = iota + 1 // Authorization: Bearer <token>
	SourceQuery                      // ?<query_param>=<token>
	SourceProtocol                   // Sec-WebSocket-Protocol: …, bearer.<token>
)

func (s Source) String() string {
	switch s {
	case SourceHeader:
		return "header"
	case SourceQuery:
		return "query"
	case SourceProtocol:
		return "protocol"
	}
	return "none"
}

// Token is a token as found in a handshake, not yet verified.
type Token struct {
	Raw    string
	Source Source
}

// bearerProtocol prefixes a token offered as a subprotocol: browsers cannot
// set Authorization on a WebSocket, and a query string ends up in access
// logs. Compared case-insensitively, so that no spelling of it reaches the
// app.
const bearerProtocol = "bearer."

// ExtractToken finds the token of a handshake (SPEC §6), looking in turn
// at authz, the Authorization header ("" if none); the query parameter
// queryParam of query, the raw query string (none when queryParam is "");
// and protocols, the Sec-WebSocket-Protocol header values, each a
// comma-separated list, for an entry bearer.<token>.
//
// An Authorization that is not "Bearer <token>" (the scheme in any case,
// spaces around the token allowed) is not a source: Basic and other
// schemes are for the app. A query parameter repeated gives its first
// non-empty value; one that does not decode is skipped. found is false when
// no source has a token.
//
// Raw is a substring of the input (or, for an escaped query value, a new
// string): copy the inputs first if they only borrow a buffer.
func ExtractToken(authz string, query string, queryParam string, protocols []string) (tok Token, found bool) {
	if raw, ok := bearerAuthorization(authz); ok {
		return Token{Raw: raw, Source: SourceHeader}, true
	}
	if raw, ok := queryValue(query, queryParam); ok {
		return Token{Raw: raw, Source: SourceQuery}, true
	}
	for _, value := range protocols {
		for value != "" {
			var entry string
			entry, value, _ = strings.Cut(value, ",")
			if raw, ok := bearerEntry(trimOWS(entry)); ok && raw != "" {
				return Token{Raw: raw, Source: SourceProtocol}, true
			}
		}
	}
	return Token{}, false
}

func bearerAuthorization(h string) (string, bool) {
	const scheme = "Bearer"
	h = trimOWS(h)
	if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) || !isOWS(h[len(scheme)]) {
		return "", false
	}
	raw := trimOWS(h[len(scheme):])
	if raw == "" || strings.ContainsAny(raw, " \t") {
		return "", false
	}
	return raw, true
}

func queryValue(query, param string) (string, bool) {
	if param == "" {
		return "", false
	}
	for query != "" {
		var pair string
		pair, query, _ = strings.Cut(query, "&")
		key, value, _ := strings.Cut(pair, "=")
		if !queryKeyIs(key, param) {
			continue
		}
		// Allocates only when value has an escape or a '+'.
		if v, err := url.QueryUnescape(value); err == nil && v != "" {
			return v, true
		}
	}
	return "", false
}

// queryKeyIs reports whether the raw key decodes to param, as the app's own
// query parser would decode it.
func queryKeyIs(key, param string) bool {
	if key == param {
		return true
	}
	if len(key) < len(param) || !strings.ContainsAny(key, "%+") {
		return false
	}
	k, err := url.QueryUnescape(key)
	return err == nil && k == param
}

func bearerEntry(entry string) (string, bool) {
	if len(entry) < len(bearerProtocol) || !strings.EqualFold(entry[:len(bearerProtocol)], bearerProtocol) {
		return "", false
	}
	return entry[len(bearerProtocol):], true
}

// StripQueryParam returns the raw query without any occurrence of param
// (keys compared decoded, as ExtractToken does, so no spelling of it is
// left): the other parameters keep their bytes and order. A query without
// param comes back unchanged.
func StripQueryParam(query, param string) string {
	if param == "" {
		return query
	}
	first := -1 // offset of the first pair to remove
	for i := 0; i < len(query); {
		end := strings.IndexByte(query[i:], '&')
		if end < 0 {
			end = len(query)
		} else {
			end += i
		}
		key, _, _ := strings.Cut(query[i:end], "=")
		if queryKeyIs(key, param) {
			first = i
			break
		}
		i = end + 1
	}
	if first < 0 {
		return query
	}
	var b strings.Builder
	b.Grow(len(query))
	// The pairs before the first match are kept as they are, with their
	// '&' separators; first-1 drops the one before the match.
	kept := first > 0
	if kept {
		b.WriteString(query[:first-1])
	}
	for rest := query[first:]; ; {
		pair, tail, more := strings.Cut(rest, "&")
		key, _, _ := strings.Cut(pair, "=")
		if !queryKeyIs(key, param) {
			if kept {
				b.WriteByte('&')
			}
			b.WriteString(pair)
			kept = true
		}
		if !more {
			break
		}
		rest = tail
	}
	return b.String()
}

// StripBearerProtocol returns a Sec-WebSocket-Protocol value without its
// bearer.* entries, so that the app never sees a token there nor chooses
// one as the protocol: "" when nothing else is left, the value unchanged
// when it has none.
func StripBearerProtocol(value string) string {
	has := false
	for rest := value; rest != "" && !has; {
		var entry string
		entry, rest, _ = strings.Cut(rest, ",")
		_, has = bearerEntry(trimOWS(entry))
	}
	if !has {
		return value
	}
	var b strings.Builder
	b.Grow(len(value))
	for rest := value; rest != ""; {
		var entry string
		entry, rest, _ = strings.Cut(rest, ",")
		entry = trimOWS(entry)
		if _, bearer := bearerEntry(entry); bearer || entry == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString(entry)
	}
	return b.String()
}

func isOWS(c byte) bool { return c == ' ' || c == '\t' }

// trimOWS trims the optional white space of RFC 9110 §5.6.3.
func trimOWS(s string) string {
	for s != "" && isOWS(s[0]) {
		s = s[1:]
	}
	for s != "" && isOWS(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}
