package upgrade

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/actioncable"
	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/proxy"
	"github.com/cablecar/cablecar/pubsub"
)

type eventSet uint8

const (
	eventOpen eventSet = 1 << iota
	eventMessage
	eventClose
	// eventShutdown is opt-in (SPEC §2, §5): not among the defaults.
	eventShutdown
	allEvents = eventOpen | eventMessage | eventClose
)

func (e eventSet) has(x eventSet) bool { return e&x != 0 }

// acceptance is what the app's accepting response asked for.
type acceptance struct {
	subscribe  []string
	state      string
	events     eventSet
	eventsPath string
	protocol   string
	// SPEC §10 (history.go): Cablecar-Envelope: json, and the positions
	// given as "; since=E:O" in Cablecar-Subscribe.
	envelope bool
	since    map[string]pubsub.Position
}

// ServeHTTP takes a WebSocket handshake through the accept callback
// (SPEC §2). It is the proxy's OnUpgrade.
func (s *Server) ServeHTTP(ctx *fasthttp.RequestCtx) {
	log := s.log.Info().Bytes("path", ctx.Path()).Str("remote", ctx.RemoteIP().String())

	if status, text := checkHandshake(ctx); status != 0 {
		s.refuse(ctx, status, "bad_handshake", text, log)
		return
	}
	if !s.cfg.Origins.Allow(string(ctx.Request.Header.Peek("Origin")), string(ctx.Host()), ctx.IsTLS()) {
		s.refuse(ctx, fasthttp.StatusForbidden, "origin",
			"403 Forbidden: this origin may not open WebSockets here (websocket.allowed_origins)", log)
		return
	}
	claims, ok := s.authenticate(ctx, log)
	if !ok {
		return
	}
	if s.hub.isClosing() {
		s.refuse(ctx, fasthttp.StatusServiceUnavailable, "shutting_down",
			"503 Service Unavailable: this server is shutting down; reconnect", log)
		return
	}
	if s.acRestore(ctx, claims, log) { // session restore, without the app (session_accept.go)
		return
	}

	id := s.hub.newID()
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	requestID := s.prepare(ctx, &req.Header)
	log = log.Str("conn_id", id).Str("request_id", requestID)
	h := &req.Header
	h.SetMethod(fasthttp.MethodGet)
	requestURI := s.appURI(ctx)
	h.SetRequestURI(requestURI)
	req.UseHostHeader = true
	for _, name := range []string{"Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Content-Length", restoreHeader} {
		h.Del(name)
	}
	if s.cfg.JWT != nil {
		// A token offered as a subprotocol is Cablecar's, not the app's.
		protocols := strings.Join(headerValues(&ctx.Request.Header, "Sec-WebSocket-Protocol"), ", ")
		h.Del("Sec-WebSocket-Protocol")
		if rest := auth.StripBearerProtocol(protocols); rest != "" {
			h.Set("Sec-WebSocket-Protocol", rest)
		}
	}
	h.Set("Cablecar-Upgrade", "websocket")
	h.Set("Cablecar-Connection-Id", id)
	if claims.JSON != nil {
		h.SetBytesV("Cablecar-Claims", claims.JSON)
	}

	start := time.Now()
	if err := s.cb.Accept(req, resp); err != nil {
		switch {
		case errors.Is(err, callback.ErrTimeout):
			s.refuse(ctx, fasthttp.StatusGatewayTimeout, "app_timeout",
				"504 Gateway Timeout: the app did not answer the WebSocket accept in time", log.Err(err))
		case errors.Is(err, callback.ErrUnreachable):
			s.refuse(ctx, fasthttp.StatusServiceUnavailable, "app_unreachable",
				"503 Service Unavailable: the app cannot be reached to accept this WebSocket", log.Err(err))
		default:
			s.refuse(ctx, fasthttp.StatusBadGateway, "app_error",
				"502 Bad Gateway: the app's answer to the WebSocket accept was not usable", log.Err(err))
		}
		return
	}
	log = log.Dur("accept_duration_ms", time.Since(start))

	if st := resp.StatusCode(); st < 200 || st > 299 {
		if (st == fasthttp.StatusUnauthorized || st == fasthttp.StatusForbidden) &&
			s.acRefuse(ctx, actioncable.ReasonUnauthorized, log) {
			return
		}
		s.relay(ctx, resp)
		s.metrics.upgrades.WithLabelValues("rejected", "app").Inc()
		log.Int("status", st).Msg("websocket rejected by the app")
		return
	}
	if !bytes.EqualFold(bytes.TrimSpace(resp.Header.Peek("Cablecar-Accept")), []byte("websocket")) {
		if s.acRefuse(ctx, actioncable.ReasonUnauthorized, log) {
			return
		}
		s.refuse(ctx, fasthttp.StatusForbidden, "not_accepted",
			"403 Forbidden: the app did not accept this WebSocket", log)
		return
	}
	acc, err := parseAcceptance(&resp.Header, &ctx.Request.Header)
	if err != nil {
		s.log.Error().Err(err).Str("conn_id", id).Msg("the app's accepting response is invalid")
		s.refuse(ctx, fasthttp.StatusBadGateway, "invalid_accept",
			"502 Bad Gateway: the app's accepting response was invalid", log.Err(err))
		return
	}

	c := &Conn{
		hub:          s.hub,
		id:           id,
		log:          connLog{l: &s.log, id: id},
		events:       acc.events,
		eventsPath:   acc.eventsPath,
		eventHeaders: s.eventHeaders(h),
		state:        acc.state,
		createdAt:    time.Now().UnixNano(),
		claims:       claims.JSON,
	}
	if !claims.Expires.IsZero() {
		// The leeway that let the token in at the handshake holds after it
		// too: accepting a token only to close it on the next tick helps
		// no one.
		c.expires = claims.Expires.Add(s.cfg.JWTLeeway).UnixNano()
	}
	if c.eventsPath == "" {
		c.eventsPath = requestURI
	}
	s.acAccepted(c, &acc)   // ActionCable: welcome first (actioncable_accept.go)
	s.histAccepted(c, &acc) // envelope, resume (history.go)
	if body := resp.Body(); len(body) > 0 {
		c.enqueue(outgoing{data: bytes.Clone(body), size: len(body)})
	}
	if !s.hub.add(c) {
		s.refuse(ctx, fasthttp.StatusServiceUnavailable, "shutting_down",
			"503 Service Unavailable: this server is shutting down; reconnect", log)
		return
	}
	if err := c.subscribe(acc.subscribe...); err != nil {
		c.abandon()
		s.refuse(ctx, fasthttp.StatusServiceUnavailable, "broker",
			"503 Service Unavailable: broadcasts are unavailable; try again", log.Err(err))
		return
	}
	if err := s.presenceAccepted(c, &resp.Header); err != nil { // presence.go
		c.abandon()
		s.log.Error().Err(err).Str("conn_id", id).Msg("the app's accepting response is invalid")
		s.refuse(ctx, fasthttp.StatusBadGateway, "invalid_accept",
			"502 Bad Gateway: the app's accepting response was invalid", log.Err(err))
		return
	}
	c.replay(acc.since) // what was missed, before any live message (history.go)

	// fasthttp keeps Set-Cookie apart from other headers, one raw value
	// per cookie; they are relayed verbatim.
	for _, v := range resp.Header.Cookies() {
		ctx.Response.Header.AddBytesV("Set-Cookie", v)
	}
	if acc.protocol != "" {
		ctx.Response.Header.Set("Sec-WebSocket-Protocol", acc.protocol)
	}
	if err := s.upgrader.Upgrade(ctx, c.run); err != nil {
		// The handshake was checked already; this is a bug, not the client.
		c.abandon()
		s.log.Error().Err(err).Str("conn_id", id).Msg("upgrading an accepted handshake failed")
		return
	}
	s.metrics.upgrades.WithLabelValues("accepted", "app").Inc()
	log.Strs("channels", acc.subscribe).Msg("websocket accepted")
}

// relay passes the app's refusal to the client as it is: status, headers
// and body, so a 401 with WWW-Authenticate or a 302 reaches the browser.
func (s *Server) relay(ctx *fasthttp.RequestCtx, resp *fasthttp.Response) {
	out := &ctx.Response
	out.Reset()
	resp.Header.CopyTo(&out.Header)
	proxy.StripResponseHeaders(&out.Header)
	var drop [][]byte
	for k := range out.Header.All() {
		if len(k) >= 9 && strings.EqualFold(string(k[:9]), "cablecar-") {
			drop = append(drop, bytes.Clone(k))
		}
	}
	for _, k := range drop {
		out.Header.DelBytes(k)
	}
	out.SetBody(resp.Body())
}

// eventHeaders are set on every event request of the connection: the
// handshake's Host and X-Forwarded-* (as the accept request had them, so
// the app sees one client either way) and callback.forward_headers, save
// any Cablecar-* or Cablecar_* name listed there (SPEC §1).
func (s *Server) eventHeaders(h *fasthttp.RequestHeader) [][2]string {
	var out [][2]string
	if host := h.Host(); len(host) > 0 {
		out = append(out, [2]string{"Host", string(host)})
	}
	for _, name := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-Id"} {
		if v := h.Peek(name); len(v) > 0 {
			out = append(out, [2]string{name, string(v)})
		}
	}
	for _, name := range s.cfg.ForwardHeaders {
		if proxy.IsCablecarHeader(name) {
			continue // Cablecar sets its own headers on each request itself
		}
		for _, v := range h.PeekAll(name) {
			out = append(out, [2]string{name, string(v)})
		}
	}
	return out
}

// parseAcceptance reads the optional headers of an accepting response
// (SPEC §2). A malformed one is the app's bug: the handshake is refused
// with 502 and the reason logged, rather than half-honoured.
func parseAcceptance(resp *fasthttp.ResponseHeader, req *fasthttp.RequestHeader) (acceptance, error) {
	acc := acceptance{events: allEvents}
	for _, v := range resp.PeekAll("Cablecar-Subscribe") {
		for _, item := range splitList(string(v)) {
			ch, since, err := cutSince(item)
			if err != nil {
				return acc, fmt.Errorf("Cablecar-Subscribe: %w", err)
			}
			if err := pubsub.ValidateChannel(ch); err != nil {
				return acc, fmt.Errorf("Cablecar-Subscribe: %w", err)
			}
			acc.subscribe = append(acc.subscribe, ch)
			if since != nil {
				if acc.since == nil {
					acc.since = map[string]pubsub.Position{}
				}
				acc.since[ch] = *since
			}
		}
	}
	switch v := strings.TrimSpace(string(resp.Peek("Cablecar-Envelope"))); {
	case v == "":
	case strings.EqualFold(v, "json"):
		acc.envelope = true
	default:
		return acc, fmt.Errorf("Cablecar-Envelope %.40q is not json", v)
	}
	if v := resp.Peek("Cablecar-State"); len(v) > callback.MaxStateSize {
		return acc, fmt.Errorf("Cablecar-State is %d bytes, more than %d", len(v), callback.MaxStateSize)
	} else {
		acc.state = string(v)
	}
	if vs := resp.PeekAll("Cablecar-Events"); len(vs) > 0 {
		acc.events = 0
		for _, v := range vs {
			for _, name := range splitList(string(v)) {
				switch strings.ToLower(name) {
				case "open":
					acc.events |= eventOpen
				case "message":
					acc.events |= eventMessage
				case "close":
					acc.events |= eventClose
				case "shutdown":
					acc.events |= eventShutdown
				default:
					return acc, fmt.Errorf("Cablecar-Events: %q is not one of open, message, close, shutdown", name)
				}
			}
		}
	}
	if v := string(resp.Peek("Cablecar-Events-Path")); v != "" {
		if !strings.HasPrefix(v, "/") || strings.HasPrefix(v, "//") || strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return acc, fmt.Errorf("Cablecar-Events-Path %.100q is not a path (it must start with one /, without spaces)", v)
		}
		acc.eventsPath = v
	}
	if p := strings.TrimSpace(string(resp.Peek("Sec-WebSocket-Protocol"))); p != "" {
		offered := false
		for _, v := range req.PeekAll("Sec-WebSocket-Protocol") {
			for _, o := range splitList(string(v)) {
				// A bearer.<token> entry carries a token, never a protocol.
				if o == p && !strings.HasPrefix(o, "bearer.") {
					offered = true
				}
			}
		}
		if !offered {
			return acc, fmt.Errorf("Sec-WebSocket-Protocol %.100q was not offered by the client", p)
		}
		acc.protocol = p
	}
	return acc, nil
}

// authenticate verifies the handshake's token, when JWT is configured:
// a missing token passes without claims unless one is required, an invalid
// one never passes (SPEC §6). Refusals are answered here, without asking
// the app.
func (s *Server) authenticate(ctx *fasthttp.RequestCtx, log *zerolog.Event) (auth.Claims, bool) {
	v := s.cfg.JWT
	if v == nil {
		return auth.Claims{}, true
	}
	h := &ctx.Request.Header
	tok, found := auth.ExtractToken(string(h.Peek("Authorization")), string(ctx.URI().QueryString()),
		v.QueryParam(), headerValues(h, "Sec-WebSocket-Protocol"))
	if !found {
		if v.Required() {
			// RFC 6750 §3.1: a request without a token gets the challenge
			// alone; it did not fail, so no error code.
			if s.acRefuse(ctx, actioncable.ReasonUnauthorized, log) {
				return auth.Claims{}, false
			}
			ctx.Response.Header.Set("WWW-Authenticate", "Bearer")
			s.refuse(ctx, fasthttp.StatusUnauthorized, "jwt", "401 Unauthorized: token required",
				log.Str("jwt", "token required"))
			return auth.Claims{}, false
		}
		return auth.Claims{}, true
	}
	claims, err := v.Verify(tok.Raw)
	if err != nil {
		reason := "invalid token"
		var ve *auth.VerifyError
		if errors.As(err, &ve) {
			reason = ve.Reason
		}
		log = log.Str("token_source", tok.Source.String())
		if reason == auth.ReasonNoKeys {
			// The key set has not arrived (Verify waited for it): the token
			// may be good, and a 401 would tell the client to throw it away.
			ctx.Response.Header.Set("Retry-After", jwksRetryAfter)
			s.refuse(ctx, fasthttp.StatusServiceUnavailable, "jwks",
				"503 Service Unavailable: the keys to verify this token have not been fetched yet; try again", log.Str("jwt", reason))
			return auth.Claims{}, false
		}
		s.unauthorized(ctx, reason, log)
		return auth.Claims{}, false
	}
	return claims, true
}

// jwksRetryAfter is the Retry-After, in seconds, of a handshake that came
// before the key set: about one more wait for it.
const jwksRetryAfter = "5"

// unauthorized refuses a token that was found bad. reason is a
// VerifyError's: a fixed phrase, safe in a header, never the token.
func (s *Server) unauthorized(ctx *fasthttp.RequestCtx, reason string, log *zerolog.Event) {
	acReason := actioncable.ReasonUnauthorized
	if reason == auth.ReasonExpired {
		acReason = actioncable.ReasonTokenExpired
	}
	if s.acRefuse(ctx, acReason, log) {
		return
	}
	ctx.Response.Header.Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="`+reason+`"`)
	s.refuse(ctx, fasthttp.StatusUnauthorized, "jwt", "401 Unauthorized: "+reason, log.Str("jwt", reason))
}

// appURI is the handshake's path and query as the app sees it: without
// the token's query parameter, when JWT is configured.
func (s *Server) appURI(ctx *fasthttp.RequestCtx) string {
	uri := stripSID(string(ctx.Request.Header.RequestURI()))
	if s.cfg.JWT == nil {
		return uri
	}
	path, query, ok := strings.Cut(uri, "?")
	if !ok {
		return uri
	}
	if query = auth.StripQueryParam(query, s.cfg.JWT.QueryParam()); query == "" {
		return path
	}
	return path + "?" + query
}

func headerValues(h *fasthttp.RequestHeader, name string) []string {
	var out []string
	for _, v := range h.PeekAll(name) {
		out = append(out, string(v))
	}
	return out
}

func splitList(v string) []string {
	var out []string
	for _, part := range strings.Split(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func (h *Hub) isClosing() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closing
}
