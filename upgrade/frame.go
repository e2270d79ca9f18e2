package upgrade

import (
	"encoding/binary"
	"sync"
	"syscall"

	"github.com/fasthttp/websocket"
)

// Frames as Cablecar writes them: a server's frames are unmasked and, with
// compression off, each message is one final frame (RFC 6455 §5.2), so a
// frame is a header of 2 to 10 bytes and the payload. The writer frames
// messages itself instead of through the library's writer, so that several
// frames go out in one write and a broadcast's frame, built once, is
// written as it is by every member.

// maxFrameHeader is the longest header of an unmasked frame.
const maxFrameHeader = 10

// appendFrameHeader appends the header of a final, unmasked frame of the
// given opcode (websocket.TextMessage, websocket.PingMessage, …) carrying n
// payload bytes.
func appendFrameHeader(b []byte, opcode int, n int) []byte {
	b = append(b, 0x80|byte(opcode))
	switch {
	case n < 126:
		return append(b, byte(n))
	case n <= 0xFFFF:
		return binary.BigEndian.AppendUint16(append(b, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
}

// newFrame is one whole frame: a broadcast's, shared by every member.
func newFrame(binaryMsg bool, payload []byte) []byte {
	opcode := websocket.TextMessage
	if binaryMsg {
		opcode = websocket.BinaryMessage
	}
	f := make([]byte, 0, maxFrameHeader+len(payload))
	return append(appendFrameHeader(f, opcode, len(payload)), payload...)
}

// writeBufSize is the size of the buffers the writer gathers frames in: a
// round of up to this many bytes is one write. Frames larger than a buffer
// are written on their own.
const writeBufSize = 4096

// writeBufs lends the writer a buffer for one round, so that an idle
// connection holds none.
var writeBufs = sync.Pool{New: func() any { b := make([]byte, 0, writeBufSize); return &b }}

// rawWrite is one write that must not wait: the frame of a broadcast,
// written by the fan-out itself when nothing is queued ahead of it. It is
// pooled with its callback bound once, so that writing through
// syscall.RawConn allocates nothing.
type rawWrite struct {
	p  []byte
	n  int
	fn func(fd uintptr) bool
}

var rawWrites = sync.Pool{New: func() any {
	w := &rawWrite{}
	w.fn = w.write
	return w
}}

// write writes what the socket takes now, and never waits for it to take
// more (returning true tells the runtime not to wait).
func (w *rawWrite) write(fd uintptr) bool {
	for w.n < len(w.p) {
		n, err := syscall.Write(int(fd), w.p[w.n:])
		if n > 0 {
			w.n += n
		}
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			break
		}
	}
	return true
}

// writeNow writes as much of p as rc takes without waiting, and says how
// much that was. A socket that is full, closed or past its write deadline
// takes nothing, or part: the rest is the writer's.
func writeNow(rc syscall.RawConn, p []byte) int {
	w := rawWrites.Get().(*rawWrite)
	w.p, w.n = p, 0
	_ = rc.Write(w.fn) // what was not written is what matters, not why
	n := w.n
	w.p = nil
	rawWrites.Put(w)
	return n
}
