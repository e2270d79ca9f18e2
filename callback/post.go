package callback

import (
	"errors"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/cablecar/cablecar/auth"
)

// Headers of the given list that are not set on event requests: they frame
// the request or carry Cablecar's own meaning.
var framingHeaders = map[string]bool{
	"content-length": true, "transfer-encoding": true, "connection": true, "keep-alive": true,
	"te": true, "trailer": true, "upgrade": true, "expect": true, "content-type": true,
	"cablecar-signature": true, "cablecar-connection-id": true,
}

func skipHeader(name string) bool {
	if len(name) > len("transfer-encoding") {
		return false // none of framingHeaders is this long, save the lowering
	}
	var b [32]byte
	lower := b[:0]
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower = append(lower, c)
	}
	return framingHeaders[string(lower)]
}

// post makes one attempt of an events request, holding a slot of the cap.
func (s *Stream) post(body []byte, sp span, attempt int) result {
	c := s.c
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)

	h := &req.Header
	h.SetMethod(fasthttp.MethodPost)
	h.SetRequestURI(s.path)
	req.UseHostHeader = true
	for _, kv := range s.headers {
		if !skipHeader(kv[0]) {
			h.Set(kv[0], kv[1])
		}
	}
	if len(h.Host()) == 0 {
		h.SetHost(c.host)
	}
	h.SetContentType("application/json")
	h.Set("Cablecar-Connection-Id", s.id)
	if c.signer.Enabled() {
		h.Set(auth.SignatureHeader, c.signer.Sign(time.Now(), body))
	}
	req.SetBodyRaw(body)

	c.m.inFlight.Inc()
	start := time.Now()
	err := c.hc.DoTimeout(req, resp, c.cfg.Timeout)
	elapsed := time.Since(start)
	c.m.inFlight.Dec()
	c.m.duration[kindEvents].Observe(elapsed.Seconds())

	res := s.result(resp, err)
	c.m.webhooks[kindEvents][res.outcome].Inc()
	s.log(c.log.Debug(), sp).Int("attempt", attempt).Int("status", res.status).
		Str("outcome", outcomeNames[res.outcome]).Dur("duration_ms", elapsed).Msg("events callback")
	return res
}

func (s *Stream) result(resp *fasthttp.Response, err error) result {
	c := s.c
	status := resp.StatusCode()
	if err != nil {
		if errors.Is(err, fasthttp.ErrBodyTooLarge) && status >= 200 && status < 300 {
			// The app took the events; only its reply is unusable.
			return result{outcome: outcomeInvalid, status: status,
				err: errors.Join(ErrInvalidReply, errors.New("reply body larger than "+strconv.Itoa(c.cfg.MaxReplySize)+" bytes"))}
		}
		if !errors.Is(err, fasthttp.ErrBodyTooLarge) {
			return result{outcome: errOutcome(err), err: err}
		}
		// A large error page: its status is what counts.
	}
	res := result{outcome: statusOutcome(status), status: status}
	switch res.outcome {
	case outcomeOK:
		if err == nil {
			res.reply, res.err = ParseReply(resp.Header.ContentType(), resp.Body())
			if res.err != nil {
				res.outcome = outcomeInvalid
			}
		}
	case outcomeFailed:
		res.retryAfter, res.hasRetry = retryAfter(resp.Header.Peek(fasthttp.HeaderRetryAfter), time.Now(), c.retryAfterCap)
	}
	return res
}
