package callback

import (
	"encoding/base64"
	"strconv"
	"sync"
	"unicode/utf8"
	"unsafe"
)

// The body of an events request is written by hand into a pooled buffer:
// it is built once per batch for every message a client sends, and
// encoding/json would cost a reflection walk and several allocations each
// time.

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// Buffers that grew past this are left to the GC rather than pooled, so one
// burst of large messages does not pin memory.
const maxPooledBody = 256 << 10

func getBody() *[]byte { return bodyPool.Get().(*[]byte) }

func putBody(b *[]byte) {
	if cap(*b) > maxPooledBody {
		return
	}
	*b = (*b)[:0]
	bodyPool.Put(b)
}

// appendBody writes {"connection":{…},"events":[…]} for one batch of the
// stream id; info.ID, when set, is the connection's id in the body (the
// same, unless the caller disagrees with itself).
func appendBody(dst []byte, id string, info ConnInfo, batch []queued) []byte {
	if info.ID == "" {
		info.ID = id
	}
	dst = append(dst, `{"connection":{"id":`...)
	dst = appendJSONString(dst, info.ID)
	dst = append(dst, `,"state":`...)
	dst = appendJSONString(dst, info.State)
	dst = append(dst, `,"channels":[`...)
	for i, ch := range info.Channels {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, ch)
	}
	dst = append(dst, ']')
	if len(info.Claims) > 0 {
		dst = append(dst, `,"claims":`...)
		dst = append(dst, info.Claims...)
	}
	dst = append(dst, `},"events":[`...)
	for i := range batch {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendEvent(dst, id, &batch[i])
	}
	return append(dst, "]}"...)
}

func appendEvent(dst []byte, connID string, q *queued) []byte {
	ev := &q.ev
	dst = append(dst, `{"id":`...)
	// The id is "<connection id>:<n>": escape the connection id, then the
	// number needs none.
	dst = appendJSONString(dst, connID)
	dst = dst[:len(dst)-1] // reopen the string
	dst = append(dst, ':')
	dst = strconv.AppendUint(dst, q.n, 10)
	dst = append(dst, `","type":`...)
	dst = appendJSONString(dst, string(ev.Type))
	switch ev.Type {
	case EventMessage:
		dst = append(dst, `,"data":`...)
		if ev.Binary {
			dst = append(dst, '"')
			dst = base64.StdEncoding.AppendEncode(dst, ev.Data)
			dst = append(dst, `","binary":true`...)
		} else {
			dst = appendJSONString(dst, bytesString(ev.Data))
		}
	case EventClose:
		dst = append(dst, `,"code":`...)
		dst = strconv.AppendInt(dst, int64(ev.Code), 10)
		dst = append(dst, `,"reason":`...)
		dst = appendJSONString(dst, ev.Reason)
		dst = append(dst, `,"by":`...)
		dst = appendJSONString(dst, ev.By)
	}
	return append(dst, '}')
}

// bytesString views b as a string for reading only, without a copy.
func bytesString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

const hexDigits = "0123456789abcdef"

// safeASCII marks the bytes below utf8.RuneSelf written as they are.
var safeASCII = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendJSONString writes s as a JSON string. Invalid UTF-8 becomes U+FFFD,
// as encoding/json does, so the body stays valid JSON whatever the caller
// passes; U+2028 and U+2029 are escaped so that the body is also valid
// JavaScript.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if safeASCII[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
