package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fasthttp/websocket"
)

// The WebSocket side of the harness: a client for the tests' end of a
// connection, and readers of what the test app (testdata/app/ws.rb) recorded
// of the accept requests and event webhooks Cablecar sent it. Everything
// here waits with a deadline; the methods that take a testing.TB fail the
// test, so call them from the test's own goroutine.

// wsTimeout bounds a handshake and every single write.
const wsTimeout = 10 * time.Second

// Message types, re-exported so tests need not import the library to name
// them.
const (
	TextMessage   = websocket.TextMessage
	BinaryMessage = websocket.BinaryMessage
)

// WSClient is the test's end of one WebSocket connection. Reads and writes
// each have their own deadline. A read that times out leaves the connection
// unusable for reading (the library makes read errors permanent), so a test
// waits for what it expects and does not poll with short reads.
type WSClient struct {
	Conn *websocket.Conn

	t testing.TB
}

// DialWS opens a WebSocket to url (ws:// or http://) with the extra request
// header and the subprotocols offered, and returns the client, the
// handshake's response and the error. A refused handshake is an error
// (websocket.ErrBadHandshake) with the response, its body holding the first
// KiB of what the server sent, so a test can check refusals. The connection
// is closed when the test ends.
func DialWS(t testing.TB, url string, header http.Header, protocols ...string) (*WSClient, *http.Response, error) {
	t.Helper()
	return DialWSWith(t, &websocket.Dialer{Subprotocols: protocols}, url, header)
}

// DialWSWith is DialWS with a dialer the test set up itself (compression,
// socket options…); its HandshakeTimeout is set when zero.
func DialWSWith(t testing.TB, d *websocket.Dialer, rawURL string, header http.Header) (*WSClient, *http.Response, error) {
	t.Helper()
	if d.HandshakeTimeout == 0 {
		d.HandshakeTimeout = wsTimeout
	}
	rawURL = wsURL(rawURL)
	ctx, cancel := context.WithTimeout(context.Background(), d.HandshakeTimeout)
	defer cancel()
	conn, resp, err := d.DialContext(ctx, rawURL, header)
	if err != nil {
		return nil, resp, err
	}
	t.Cleanup(func() { conn.Close() })
	return &WSClient{Conn: conn, t: t}, resp, nil
}

// MustDialWS is DialWS that fails the test unless the handshake got 101.
func MustDialWS(t testing.TB, url string, header http.Header, protocols ...string) (*WSClient, *http.Response) {
	t.Helper()
	ws, resp, err := DialWS(t, url, header, protocols...)
	if err != nil {
		t.Fatalf("WebSocket handshake to %s: %v%s", url, err, describeResponse(resp))
	}
	return ws, resp
}

// wsURL turns http(s):// into ws(s)://.
func wsURL(u string) string {
	if rest, ok := strings.CutPrefix(u, "http://"); ok {
		return "ws://" + rest
	}
	if rest, ok := strings.CutPrefix(u, "https://"); ok {
		return "wss://" + rest
	}
	return u
}

func describeResponse(resp *http.Response) string {
	if resp == nil {
		return ""
	}
	var body []byte
	if resp.Body != nil {
		body, _ = io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body = io.NopCloser(bytes.NewReader(body))
	}
	return fmt.Sprintf(" (status %d, body %.200q)", resp.StatusCode, body)
}

// Send writes one text message.
func (c *WSClient) Send(text string) {
	c.t.Helper()
	if err := c.write(websocket.TextMessage, []byte(text)); err != nil {
		c.t.Fatalf("send %.100q: %v", text, err)
	}
}

// SendBinary writes one binary message.
func (c *WSClient) SendBinary(data []byte) {
	c.t.Helper()
	if err := c.write(websocket.BinaryMessage, data); err != nil {
		c.t.Fatalf("send %d binary bytes: %v", len(data), err)
	}
}

// TrySend writes one message of type kind and returns the error instead of
// failing: for writes that may race a close the test provoked.
func (c *WSClient) TrySend(kind int, data []byte) error { return c.write(kind, data) }

func (c *WSClient) write(kind int, data []byte) error {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(wsTimeout))
	return c.Conn.WriteMessage(kind, data)
}

// Read returns the next data message, with its type, or the error that
// ended the wait: a *websocket.CloseError when the server closed, a timeout
// when nothing came in time. Control frames are handled on the way (pings
// answered, a close echoed).
func (c *WSClient) Read(timeout time.Duration) (kind int, data []byte, err error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(timeout))
	return c.Conn.ReadMessage()
}

// Expect fails unless the next message is of type kind holding want.
func (c *WSClient) Expect(timeout time.Duration, kind int, want []byte) {
	c.t.Helper()
	got, data, err := c.Read(timeout)
	if err != nil {
		c.t.Fatalf("waiting for %s %.200q: %v", kindName(kind), want, err)
	}
	if got != kind || !bytes.Equal(data, want) {
		c.t.Fatalf("got %s %.200q, want %s %.200q", kindName(got), data, kindName(kind), want)
	}
}

// ExpectText fails unless the next message is the text want.
func (c *WSClient) ExpectText(timeout time.Duration, want string) {
	c.t.Helper()
	c.Expect(timeout, websocket.TextMessage, []byte(want))
}

// ExpectBinary fails unless the next message is the binary want.
func (c *WSClient) ExpectBinary(timeout time.Duration, want []byte) {
	c.t.Helper()
	c.Expect(timeout, websocket.BinaryMessage, want)
}

func kindName(kind int) string {
	switch kind {
	case websocket.TextMessage:
		return "text"
	case websocket.BinaryMessage:
		return "binary"
	}
	return fmt.Sprintf("type %d", kind)
}

// ReadClose reads, skipping data messages (at most 10,000 of them), until
// the server's close frame arrives, and returns its code and reason. The
// error says what ended the connection instead: a timeout, or the socket
// ending without a close frame.
func (c *WSClient) ReadClose(timeout time.Duration) (code int, reason string, err error) {
	deadline := time.Now().Add(timeout)
	_ = c.Conn.SetReadDeadline(deadline)
	for range 10000 {
		_, _, err := c.Conn.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code, ce.Text, nil
		}
		return 0, "", fmt.Errorf("connection ended without a close frame: %w", err)
	}
	return 0, "", errors.New("10000 messages and no close frame")
}

// ExpectClose waits for the server's close frame and returns its code and
// reason; the library echoes the close, completing the handshake.
func (c *WSClient) ExpectClose(timeout time.Duration) (code int, reason string) {
	c.t.Helper()
	code, reason, err := c.ReadClose(timeout)
	if err != nil {
		c.t.Fatalf("waiting for a close frame: %v", err)
	}
	return code, reason
}

// ExpectCloseCode fails unless the server closes with code.
func (c *WSClient) ExpectCloseCode(timeout time.Duration, want int) string {
	c.t.Helper()
	code, reason := c.ExpectClose(timeout)
	if code != want {
		c.t.Fatalf("closed with %d %q, want %d", code, reason, want)
	}
	return reason
}

// CloseWith starts the close handshake from the client's side with code and
// reason and waits, up to timeout, for the server's close frame; it returns
// the code the server answered with.
func (c *WSClient) CloseWith(timeout time.Duration, code int, reason string) int {
	c.t.Helper()
	msg := websocket.FormatCloseMessage(code, reason)
	if err := c.Conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wsTimeout)); err != nil {
		c.t.Fatalf("sending close %d: %v", code, err)
	}
	got, _ := c.ExpectClose(timeout)
	c.Conn.Close()
	return got
}

// ConnectWS dials target (a path with optional query, e.g.
// "/ws/chat?subscribe=a") on c with a fresh tag added, requires 101, and
// returns the client with the connection id the app was told.
func ConnectWS(t testing.TB, c *Cablecar, p *Puma, target string, header http.Header, protocols ...string) (*WSClient, string) {
	t.Helper()
	ws, _, id := ConnectWSResp(t, c, p, target, header, protocols...)
	return ws, id
}

// ConnectWSResp is ConnectWS returning the handshake's response too.
func ConnectWSResp(t testing.TB, c *Cablecar, p *Puma, target string, header http.Header, protocols ...string) (*WSClient, *http.Response, string) {
	t.Helper()
	tag := NewTag(t)
	ws, resp := MustDialWS(t, c.URL+WithQuery(target, "tag", tag), header, protocols...)
	return ws, resp, ConnID(t, p, tag)
}

// ConnID is the id of the one connection whose accept carried tag.
func ConnID(t testing.TB, p *Puma, tag string) string {
	t.Helper()
	ids := AppConns(t, p, tag)
	if len(ids) != 1 {
		t.Fatalf("the app saw %d accept requests tagged %s (%v), want 1", len(ids), tag, ids)
	}
	return ids[0]
}

// WithQuery adds key=value to target's query.
func WithQuery(target, key, value string) string {
	sep := "?"
	if strings.Contains(target, "?") {
		sep = "&"
	}
	return target + sep + url.QueryEscape(key) + "=" + url.QueryEscape(value)
}

// --- the admin API --------------------------------------------------------

// AdminPost POSTs body to path on c's admin listener (SPEC §4) and returns
// the status and the response body. body is sent as is when it is a string
// or []byte (for malformed input), else as JSON; apiKey, when not empty,
// goes in Authorization: Bearer.
func AdminPost(t testing.TB, c *Cablecar, path string, body any, apiKey string) (status int, respBody string) {
	t.Helper()
	var payload []byte
	switch b := body.(type) {
	case string:
		payload = []byte(b)
	case []byte:
		payload = b
	default:
		var err error
		if payload, err = json.Marshal(body); err != nil {
			t.Fatalf("AdminPost %s: %v", path, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.AdminURL+path, bytes.NewReader(payload))
	if err != nil {
		t.Fatalf("AdminPost %s: %v", path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+apiKey)
	}
	resp, err := c.admin.Do(req)
	if err != nil {
		t.Fatalf("POST %s on the admin listener: %v", path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("POST %s on the admin listener: reading the body: %v", path, err)
	}
	return resp.StatusCode, string(data)
}

// MustAdminPost is AdminPost that fails the test unless the status is 2xx.
func MustAdminPost(t testing.TB, c *Cablecar, path string, body any, apiKey string) string {
	t.Helper()
	code, resp := AdminPost(t, c, path, body, apiKey)
	if code < 200 || code > 299 {
		t.Fatalf("POST %s %v: status %d: %.300q", path, body, code, resp)
	}
	return resp
}

// --- raw sockets ----------------------------------------------------------

// RawHandshake opens a TCP connection to addr, writes a WebSocket handshake
// for target by hand and reads the response head. It returns the open
// connection (closed when the test ends) and the response: a client that
// then neither reads nor writes is a half-open peer.
func RawHandshake(t testing.TB, addr, target string) (net.Conn, *http.Response) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(wsTimeout))
	req := "GET " + target + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatalf("write handshake: %v", err)
	}
	// Read the head byte by byte so nothing after it is consumed.
	var head []byte
	one := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if len(head) > 16<<10 {
			t.Fatalf("handshake response head over 16 KiB: %.200q", head)
		}
		if _, err := conn.Read(one); err != nil {
			t.Fatalf("read handshake response: %v after %q", err, head)
		}
		head = append(head, one[0])
	}
	_ = conn.SetDeadline(time.Time{})
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head)), &http.Request{Method: "GET"})
	if err != nil {
		t.Fatalf("parse handshake response %q: %v", head, err)
	}
	return conn, resp
}

// RawFrame is one WebSocket frame written by hand, for frames a client
// library refuses to send: first is the first byte (FIN, RSV bits and
// opcode), and the payload is masked unless unmasked is set, as a client's
// must be.
type RawFrame struct {
	First    byte
	Payload  []byte
	Unmasked bool
}

// WriteRawFrame writes f on conn.
func WriteRawFrame(conn net.Conn, f RawFrame) error {
	frame := []byte{f.First}
	maskBit := byte(0x80)
	if f.Unmasked {
		maskBit = 0
	}
	switch n := len(f.Payload); {
	case n < 126:
		frame = append(frame, maskBit|byte(n))
	case n < 1<<16:
		frame = append(frame, maskBit|126, byte(n>>8), byte(n))
	default:
		return fmt.Errorf("RawFrame: %d bytes is more than this helper writes", n)
	}
	payload := bytes.Clone(f.Payload)
	if !f.Unmasked {
		key := []byte{0x12, 0x34, 0x56, 0x78}
		frame = append(frame, key...)
		for i := range payload {
			payload[i] ^= key[i%4]
		}
	}
	_ = conn.SetWriteDeadline(time.Now().Add(wsTimeout))
	_, err := conn.Write(append(frame, payload...))
	return err
}

// ReadRawClose reads server frames from conn (unmasked, as a server's are),
// skipping any other, until a close frame, and returns its code (1005 when
// it has none) and reason.
func ReadRawClose(conn net.Conn, timeout time.Duration) (code int, reason string, err error) {
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	br := bufio.NewReader(conn)
	for range 10000 {
		var head [2]byte
		if _, err := io.ReadFull(br, head[:]); err != nil {
			return 0, "", fmt.Errorf("connection ended without a close frame: %w", err)
		}
		n := int64(head[1] & 0x7f)
		switch n {
		case 126:
			var ext [2]byte
			if _, err := io.ReadFull(br, ext[:]); err != nil {
				return 0, "", err
			}
			n = int64(ext[0])<<8 | int64(ext[1])
		case 127:
			var ext [8]byte
			if _, err := io.ReadFull(br, ext[:]); err != nil {
				return 0, "", err
			}
			n = 0
			for _, b := range ext {
				n = n<<8 | int64(b)
			}
		}
		if head[1]&0x80 != 0 {
			return 0, "", errors.New("the server sent a masked frame")
		}
		payload := make([]byte, min(n, 1<<20))
		if _, err := io.ReadFull(br, payload); err != nil {
			return 0, "", err
		}
		if _, err := io.CopyN(io.Discard, br, n-int64(len(payload))); err != nil {
			return 0, "", err
		}
		if head[0]&0x0f == websocket.CloseMessage {
			if len(payload) < 2 {
				return websocket.CloseNoStatusReceived, "", nil
			}
			return int(payload[0])<<8 | int(payload[1]), string(payload[2:]), nil
		}
	}
	return 0, "", errors.New("10000 frames and no close frame")
}
