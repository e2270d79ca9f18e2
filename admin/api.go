package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/pubsub"
)

// maxAPIBody bounds a request to the broadcast API.
const maxAPIBody = 16 << 20

// apiTimeout bounds the broker calls of one API request.
const apiTimeout = 10 * time.Second

// Broadcaster is what the API needs of the broker: publishing and reaching
// one connection wherever it is.
type Broadcaster interface {
	Publish(ctx context.Context, msgs ...pubsub.Message) error
	Direct(ctx context.Context, cmd pubsub.Command) error
}

// EnableAPI serves POST /publish, /send and /close (SPEC §4) through b.
// With a non-empty apiKey every call must carry "Authorization: Bearer
// <apiKey>". Call it before Serve.
func (s *Server) EnableAPI(b Broadcaster, apiKey string) {
	a := &api{b: b}
	if apiKey != "" {
		// Comparing fixed-length digests keeps the comparison constant-time
		// whatever the length of the key sent.
		sum := sha256.Sum256([]byte(apiKey))
		a.keySum = &sum
		s.keyed = true
	}
	s.api = a
	s.mux.Handle("POST /publish", a.post(a.publish))
	s.mux.Handle("POST /send", a.post(a.send))
	s.mux.Handle("POST /close", a.post(a.close))
}

// Connection is what GET /connections/<id> answers for an open connection.
type Connection struct {
	ID   string `json:"id"`
	Node string `json:"node,omitempty"` // the node holding it; "" while detached
	// Channels are those it is subscribed to, sorted; never null.
	Channels []string `json:"channels"`
	Detached bool     `json:"detached,omitempty"` // waiting to be restored (SPEC §10)
}

// Lookup finds a connection open on any node; ok is false when it is open
// nowhere, err when that cannot be known now.
type Lookup func(ctx context.Context, id string) (c Connection, ok bool, err error)

// EnableLookup serves GET /connections/<id> through l, with the API's key.
// Call it after EnableAPI, before Serve.
func (s *Server) EnableLookup(l Lookup) {
	a := s.api
	s.mux.Handle("GET /connections/{id}", a.get(func(ctx context.Context, r *http.Request) (any, error) {
		id := r.PathValue("id")
		c, ok, err := l(ctx, id)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, &apiError{http.StatusNotFound, fmt.Sprintf("connection %.64q is not open on any node", id)}
		}
		if c.Channels == nil {
			c.Channels = []string{}
		}
		slices.Sort(c.Channels)
		return c, nil
	}))
}

type api struct {
	b      Broadcaster
	keySum *[32]byte
}

// apiError is an answer other than success.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// authorized answers 401 and returns false unless r carries the key (when
// one is set).
func (a *api) authorized(w http.ResponseWriter, r *http.Request) bool {
	if a.keySum == nil {
		return true
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	if !ok || subtle.ConstantTimeCompare(sum[:], a.keySum[:]) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="cablecar"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong API key: send Authorization: Bearer <admin.api_key>"})
		return false
	}
	return true
}

// post serves a call whose input is a JSON body.
func (a *api) post(h func(ctx context.Context, body []byte) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.authorized(w, r) {
			return
		}
		if msg := jsonContentType(r); msg != "" {
			writeJSON(w, http.StatusUnsupportedMediaType, map[string]string{"error": msg})
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAPIBody))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": fmt.Sprintf("body larger than %d bytes", maxAPIBody)})
				return
			}
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "reading the body: " + err.Error()})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
		defer cancel()
		out, err := h(ctx, body)
		answer(w, out, err)
	})
}

// get serves a call whose input is the request's path.
func (a *api) get(h func(ctx context.Context, r *http.Request) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.authorized(w, r) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
		defer cancel()
		out, err := h(ctx, r)
		answer(w, out, err)
	})
}

// answer writes out as 200, or err as the status it maps to.
func answer(w http.ResponseWriter, out any, err error) {
	if err == nil {
		writeJSON(w, http.StatusOK, out)
		return
	}
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		writeJSON(w, ae.status, map[string]string{"error": ae.msg})
	case errors.Is(err, pubsub.ErrNoConnection):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
	default:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "broker: " + err.Error()})
	}
}

// payload is the data of a message in the API: text as it is, binary as
// base64.
func payload(data *string, binary bool, where string) ([]byte, error) {
	if data == nil {
		return nil, badRequest("%s: \"data\" is missing", where)
	}
	if !binary {
		if !utf8.ValidString(*data) {
			return nil, badRequest("%s: \"data\" is not valid UTF-8", where)
		}
		return []byte(*data), nil
	}
	b, err := base64.StdEncoding.DecodeString(*data)
	if err != nil {
		return nil, badRequest("%s: \"data\" is not base64 although \"binary\" is true: %v", where, err)
	}
	return b, nil
}

type publishItem struct {
	Channel string  `json:"channel"`
	Data    *string `json:"data"`
	Binary  bool    `json:"binary"`
	Except  string  `json:"except"`
}

// publish takes one message or an array of them; all are checked before
// any is published.
func (a *api) publish(ctx context.Context, body []byte) (any, error) {
	var items []publishItem
	trimmed := strings.TrimSpace(string(body))
	if strings.HasPrefix(trimmed, "[") {
		if err := strictJSON(body, &items); err != nil {
			return nil, err
		}
		if len(items) == 0 {
			return nil, badRequest("the array is empty: nothing to publish")
		}
	} else {
		var one publishItem
		if err := strictJSON(body, &one); err != nil {
			return nil, err
		}
		items = []publishItem{one}
	}
	msgs := make([]pubsub.Message, len(items))
	for i, it := range items {
		where := "message"
		if len(items) > 1 {
			where = fmt.Sprintf("message %d", i)
		}
		if err := pubsub.ValidateChannel(it.Channel); err != nil {
			return nil, badRequest("%s: \"channel\": %v", where, err)
		}
		data, err := payload(it.Data, it.Binary, where)
		if err != nil {
			return nil, err
		}
		msgs[i] = pubsub.Message{Channel: it.Channel, Data: data, Binary: it.Binary, Except: it.Except}
	}
	if err := a.b.Publish(ctx, msgs...); err != nil {
		return nil, err
	}
	return publishAnswer(a.b, msgs), nil
}

func (a *api) send(ctx context.Context, body []byte) (any, error) {
	var in struct {
		Connection string  `json:"connection"`
		Data       *string `json:"data"`
		Binary     bool    `json:"binary"`
		Identifier string  `json:"identifier"` // an ActionCable subscription (SPEC §9)
	}
	if err := strictJSON(body, &in); err != nil {
		return nil, err
	}
	if in.Connection == "" {
		return nil, badRequest("\"connection\" is missing")
	}
	data, err := payload(in.Data, in.Binary, "send")
	if err != nil {
		return nil, err
	}
	err = a.b.Direct(ctx, pubsub.Command{Kind: pubsub.CommandSend, Connection: in.Connection, Data: data, Binary: in.Binary,
		Identifier: in.Identifier})
	if err != nil {
		return nil, err
	}
	return map[string]string{"sent": in.Connection}, nil
}

func (a *api) close(ctx context.Context, body []byte) (any, error) {
	var in struct {
		Connection string `json:"connection"`
		// Channel in place of Connection closes every connection
		// subscribed to it, on every node.
		Channel string `json:"channel"`
		Code    *int   `json:"code"`
		Reason  string `json:"reason"`
		// Reconnect false tells an ActionCable client not to come back
		// (SPEC §9); default true.
		Reconnect *bool `json:"reconnect"`
	}
	if err := strictJSON(body, &in); err != nil {
		return nil, err
	}
	switch {
	case in.Connection == "" && in.Channel == "":
		return nil, badRequest("\"connection\" or \"channel\" is missing")
	case in.Connection != "" && in.Channel != "":
		return nil, badRequest("give \"connection\" or \"channel\", not both")
	}
	code := 1000
	if in.Code != nil {
		code = *in.Code
	}
	if !callback.AppCloseCode(code) {
		return nil, badRequest("\"code\" %d: use 1000 or 3000–4999 (the others are the protocol's)", code)
	}
	if len(in.Reason) > callback.MaxCloseReasonSize || !utf8.ValidString(in.Reason) {
		return nil, badRequest("\"reason\" must be valid UTF-8 of at most %d bytes", callback.MaxCloseReasonSize)
	}
	noReconnect := in.Reconnect != nil && !*in.Reconnect
	if in.Channel != "" {
		if err := pubsub.ValidateChannel(in.Channel); err != nil {
			return nil, badRequest("\"channel\": %v", err)
		}
		// Where a broadcast to the channel goes: every node subscribed.
		err := a.b.Publish(ctx, pubsub.Message{Channel: in.Channel,
			Close: &pubsub.ChannelClose{Code: code, Reason: in.Reason, NoReconnect: noReconnect}})
		if err != nil {
			return nil, err
		}
		return map[string]string{"closed_channel": in.Channel}, nil
	}
	err := a.b.Direct(ctx, pubsub.Command{Kind: pubsub.CommandClose, Connection: in.Connection, Code: code, Reason: in.Reason,
		NoReconnect: noReconnect})
	if err != nil {
		return nil, err
	}
	return map[string]string{"closed": in.Connection}, nil
}

// strictJSON decodes one JSON value, refusing unknown fields so that a typo
// ("chanel") is an error rather than a silent no-op.
func strictJSON(body []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("invalid JSON: %v", err)
	}
	if dec.More() {
		return badRequest("invalid JSON: more than one value in the body")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
