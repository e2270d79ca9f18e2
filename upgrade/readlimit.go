package upgrade

import (
	"io"

	"github.com/fasthttp/websocket"
)

// websocket.max_message_size is Cablecar's to enforce, not the WebSocket
// library's: given a read limit, the library writes the 1009 close frame
// itself, from the read loop, beside our writer — ahead of an ActionCable
// client's disconnect frame (SPEC §9), and possibly inside a frame the
// writer is in the middle of. So the library reads without a limit and
// readMessage stops a message one byte past it; the close then goes
// through the writer, like every close Cablecar makes.

// readMessage reads the next data message, at most max bytes of it;
// tooBig reports a message longer than that (its data is not returned; the
// rest of it is discarded by the next read).
func readMessage(ws *websocket.Conn, max int64) (typ int, data []byte, tooBig bool, err error) {
	typ, r, err := ws.NextReader()
	if err != nil {
		return typ, nil, false, err
	}
	if max <= 0 { // no limit
		data, err = io.ReadAll(r)
		return typ, data, false, err
	}
	data, err = io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return typ, nil, false, err
	}
	if int64(len(data)) > max {
		return typ, nil, true, nil
	}
	return typ, data, false, nil
}
