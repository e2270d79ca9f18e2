package callback

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// backoff is the pause before retry number n (1 for the first retry):
// base doubling up to limit, half of it random, so that connections that
// failed together (an app restart) do not all come back in the same
// instant.
func backoff(n int, base, limit time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + rand.N(half+1)
}

// retryAfter reads a Retry-After header: delay seconds or an HTTP-date
// (RFC 9110 §10.2.3), capped at limit. ok is false when there is none or it
// cannot be read, and the usual backoff applies.
func retryAfter(v []byte, now time.Time, limit time.Duration) (d time.Duration, ok bool) {
	s := strings.TrimSpace(string(v))
	if s == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(s, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		if secs > int64(limit/time.Second) {
			return limit, true
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(s)
	if err != nil {
		return 0, false
	}
	return min(max(t.Sub(now), 0), limit), true
}
