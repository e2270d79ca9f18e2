package callback

import (
	"encoding/base64"
	"strconv"
	"sync"
	"unsafe"

	"github.com/cablecar/cablecar/internal/jsontext"
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
	dst = jsontext.AppendString(dst, info.ID)
	dst = append(dst, `,"state":`...)
	dst = jsontext.AppendString(dst, info.State)
	dst = append(dst, `,"channels":[`...)
	for i, ch := range info.Channels {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = jsontext.AppendString(dst, ch)
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
		dst = appendEvent(dst, id, &batch[i], info.ChannelStates)
	}
	return append(dst, "]}"...)
}

func appendEvent(dst []byte, connID string, q *queued, states map[string]string) []byte {
	ev := &q.ev
	dst = append(dst, `{"id":`...)
	// The id is "<connection id>:<n>": escape the connection id, then the
	// number needs none.
	dst = jsontext.AppendString(dst, connID)
	dst = dst[:len(dst)-1] // reopen the string
	dst = append(dst, ':')
	dst = strconv.AppendUint(dst, q.n, 10)
	dst = append(dst, `","type":`...)
	dst = jsontext.AppendString(dst, string(ev.Type))
	switch ev.Type {
	case EventMessage:
		dst = append(dst, `,"data":`...)
		if ev.Binary {
			dst = append(dst, '"')
			dst = base64.StdEncoding.AppendEncode(dst, ev.Data)
			dst = append(dst, `","binary":true`...)
		} else {
			dst = jsontext.AppendString(dst, bytesString(ev.Data))
		}
	case EventClose:
		dst = append(dst, `,"code":`...)
		dst = strconv.AppendInt(dst, int64(ev.Code), 10)
		dst = append(dst, `,"reason":`...)
		dst = jsontext.AppendString(dst, ev.Reason)
		dst = append(dst, `,"by":`...)
		dst = jsontext.AppendString(dst, ev.By)
	}
	dst = appendActionCable(dst, ev, states)
	if len(ev.Recovered) > 0 {
		dst = append(dst, `,"recovered":`...)
		dst = append(dst, ev.Recovered...)
	}
	dst = appendPresence(dst, ev)
	return append(dst, '}')
}

// bytesString views b as a string for reading only, without a copy.
func bytesString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}
