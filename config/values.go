package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cablecar/cablecar/pubsub"
)

// The parsers below return errors that complete a sentence starting with
// the quoted value: `"5x" is not a duration (...)`.

var (
	errNoValue    = errors.New("has no value")
	errEmptyEntry = errors.New("is an empty list entry")
)

// parseDuration accepts Go durations. Almost every duration in the config
// bounds a wait, and none of those has a sensible "no limit", so zero and
// negative are refused rather than given a special meaning; the few where
// zero means "none" (a leeway) pass zeroOK.
func parseDuration(s string, zeroOK bool) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		if _, numErr := strconv.ParseFloat(s, 64); numErr == nil {
			return 0, errors.New("has no unit (examples: 250ms, 5s, 1m)")
		}
		return 0, errors.New("is not a duration (examples: 250ms, 5s, 1m)")
	}
	if d < 0 && zeroOK {
		return 0, errors.New("must not be negative (examples: 0s, 250ms, 5s)")
	}
	if d <= 0 && !zeroOK {
		return 0, errors.New("must be greater than zero (examples: 250ms, 5s, 1m)")
	}
	return d, nil
}

// formatDuration writes d in whole seconds when it is a few minutes or
// less (as sidecar.yaml does: 60s, 120s), else in the largest whole unit,
// and never as Go's "1m0s".
func formatDuration(d time.Duration) string {
	if d%time.Second == 0 && d < 10*time.Minute {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}, {time.Millisecond, "ms"}} {
		if d%u.d == 0 {
			return strconv.FormatInt(int64(d/u.d), 10) + u.name
		}
	}
	return d.String()
}

var sizeUnits = []struct {
	name string
	n    int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

const sizeForms = "use bytes or a KiB, MiB or GiB suffix, e.g. 1048576, 512KiB, 1MiB"

// parseSize reads a whole number of bytes, optionally with a binary
// suffix. Decimal units (KB, MB) are refused: whether they mean 1000 or
// 1024 is exactly the doubt a limit should not have.
func parseSize(s string) (int64, error) {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range sizeUnits {
		if len(num) > len(u.name) && strings.EqualFold(num[len(num)-len(u.name):], u.name) {
			num, mult = strings.TrimSpace(num[:len(num)-len(u.name)]), u.n
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("is not a size (%s)", sizeForms)
	}
	if n > math.MaxInt64/mult {
		return 0, errors.New("is too large")
	}
	return n * mult, nil
}

// formatSize writes n in the largest binary unit that divides it.
func formatSize(n int64) string {
	for _, u := range sizeUnits {
		if n != 0 && n%u.n == 0 && u.n > 1 {
			return strconv.FormatInt(n/u.n, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

func parseInt(s string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, errors.New("is too large")
		}
		return 0, errors.New("is not a whole number")
	}
	return n, nil
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "yes", "1":
		return true, nil
	case "false", "no", "0":
		return false, nil
	}
	return false, errors.New("is not a boolean (use true or false)")
}

const upstreamForms = "use http://host:port or unix:/path/to/sock"

// parseUpstream reads http://host:port or unix:/path (unix:///path too).
// Cablecar talks plain HTTP to an app beside it, so https and the like
// are refused rather than half supported.
func parseUpstream(s string) (Upstream, error) {
	if len(s) >= 5 && strings.EqualFold(s[:5], "unix:") {
		return parseUnixUpstream(s[5:])
	}
	if !strings.Contains(s, "://") {
		if _, _, err := net.SplitHostPort(s); err == nil {
			return Upstream{}, fmt.Errorf("has no scheme (did you mean \"http://%s\"?)", s)
		}
		if strings.HasPrefix(s, "/") {
			return Upstream{}, fmt.Errorf("has no scheme (did you mean \"unix:%s\"?)", s)
		}
		return Upstream{}, fmt.Errorf("is not an upstream (%s)", upstreamForms)
	}
	u, err := url.Parse(s)
	if err != nil {
		return Upstream{}, fmt.Errorf("is not a URL (%s)", upstreamForms)
	}
	if !strings.EqualFold(u.Scheme, "http") {
		return Upstream{}, fmt.Errorf("has unknown scheme %q (%s)", u.Scheme, upstreamForms)
	}
	switch {
	case u.User != nil:
		return Upstream{}, errors.New("must not hold a user or password")
	case u.Path != "" && u.Path != "/":
		return Upstream{}, fmt.Errorf("has a path %q: requests keep their own path, so give only http://host:port", u.Path)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return Upstream{}, errors.New("must not have a query or fragment (use http://host:port)")
	case u.Port() == "":
		return Upstream{}, fmt.Errorf("has no port (e.g. http://%s:3001)", u.Hostname())
	}
	if err := checkPort(u.Port(), 1); err != nil {
		return Upstream{}, err
	}
	if err := checkHost(u.Hostname()); err != nil || u.Hostname() == "" {
		return Upstream{}, fmt.Errorf("has a bad host %q (%s)", u.Hostname(), upstreamForms)
	}
	return Upstream{Network: "tcp", Address: net.JoinHostPort(u.Hostname(), u.Port())}, nil
}

func parseUnixUpstream(rest string) (Upstream, error) {
	if after, ok := strings.CutPrefix(rest, "//"); ok {
		// unix://host/path would name a host, which a socket has not.
		if !strings.HasPrefix(after, "/") {
			return Upstream{}, errors.New("names a host; use unix:/abs/path.sock or unix:///abs/path.sock")
		}
		rest = after
	}
	if rest == "" {
		return Upstream{}, errors.New("has no socket path (use unix:/path/to/sock)")
	}
	if strings.ContainsAny(rest, "?#\x00") {
		return Upstream{}, errors.New("has a bad socket path (use unix:/path/to/sock)")
	}
	return Upstream{Network: "unix", Address: rest}, nil
}

// checkListen accepts host:port where host is empty, an IP or a name.
func checkListen(s string) error {
	if s == "" {
		return errors.New(`is empty (expected host:port, e.g. ":3000")`)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if isDigits(s) {
			return fmt.Errorf("has no colon (did you mean \":%s\"?)", s)
		}
		return errors.New(`is not host:port (e.g. ":3000", "127.0.0.1:3000", "[::1]:3000")`)
	}
	if err := checkPort(port, 0); err != nil {
		return err
	}
	if err := checkHost(host); err != nil {
		return err
	}
	return nil
}

func checkListenOrEmpty(s string) error {
	if s == "" {
		return nil
	}
	return checkListen(s)
}

func checkPort(p string, min int) error {
	n, err := strconv.Atoi(p)
	if !isDigits(p) || err != nil || n < min || n > 65535 {
		return fmt.Errorf("has a bad port %q (a number, %d to 65535)", p, min)
	}
	return nil
}

// checkHost accepts "", an IP address or a DNS name.
func checkHost(h string) error {
	if h == "" {
		return nil
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return nil
	}
	if len(h) > 253 || strings.HasPrefix(h, "-") || strings.HasPrefix(h, ".") || strings.Contains(h, "..") {
		return fmt.Errorf("has a bad host %q", h)
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
			return fmt.Errorf("has a bad host %q", h)
		}
	}
	return nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// parsePrefix reads a CIDR prefix or a bare IP (one address).
func parsePrefix(s string) (netip.Prefix, error) {
	const forms = "use an IP or a CIDR prefix, e.g. 10.0.0.0/8, 192.0.2.7, ::1/128"
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("is not an IP or prefix (%s)", forms)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("is not an IP or prefix (%s)", forms)
	}
	// 10.1.2.3/8 is most likely a typo for one of two different things;
	// ask rather than guess.
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("has bits set past the prefix length (did you mean %s, or %s?)", p.Masked(), p.Addr())
	}
	return p, nil
}

// checks are the named validations a field's check tag may ask for; each
// sees one string (or one list entry).
var checks = map[string]func(string) error{
	"listen":          checkListen,
	"listen_or_empty": checkListenOrEmpty,
	"broker_url":      checkBrokerURL,
	"broker_prefix":   checkBrokerPrefix,
	"http_url":        checkHTTPURL,
	"origin":          checkOrigin,
	"header":          checkHeaderName,
	"path":            checkPath,
	"nonempty":        checkNonEmpty,
	"channel_pattern": checkChannelPattern,
}

// checkChannelPattern accepts a channel name (SPEC §4), or one ending in
// "*" to match every channel with that prefix ("*" alone: all).
func checkChannelPattern(s string) error {
	name, prefix := strings.CutSuffix(s, "*")
	if prefix && name == "" {
		return nil
	}
	if err := pubsub.ValidateChannel(name); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "channel name "))
	}
	return nil
}

func checkNonEmpty(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	return nil
}

func checkBrokerURL(s string) error {
	if s == "" {
		return nil
	}
	const forms = `use redis://, rediss://, redis+sentinel://, redis+cluster:// or rediss+cluster://, or "" for in-memory`
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return fmt.Errorf("is not a URL (%s)", forms)
	}
	switch strings.ToLower(u.Scheme) {
	case "redis", "rediss", "redis+sentinel", "redis+cluster", "rediss+cluster":
	default:
		return fmt.Errorf("has unknown scheme %q (%s)", u.Scheme, forms)
	}
	if u.Host == "" {
		return errors.New("has no host (e.g. redis://redis:6379/0)")
	}
	// The same parser the broker uses: what it would refuse at start-up
	// (an unknown parameter, a sentinel URL without master_name) is
	// refused here, as a config error.
	if err := pubsub.CheckRedisURL(s); err != nil {
		return fmt.Errorf("cannot be used: %v", err)
	}
	return nil
}

// checkBrokerPrefix keeps out what would change the meaning of Redis names:
// braces are Redis Cluster hash tags, and "~" starts Cablecar's own names.
func checkBrokerPrefix(s string) error {
	if i := strings.IndexAny(s, "{}~ \t\r\n"); i >= 0 {
		return fmt.Errorf("must not contain %q: braces are Redis Cluster hash tags and ~ starts Cablecar's own names", s[i])
	}
	return nil
}

func checkHTTPURL(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("is not an http:// or https:// URL")
	}
	return nil
}

// checkOrigin accepts "*" or scheme://host[:port], the form browsers send
// in Origin, which is compared exactly.
func checkOrigin(s string) error {
	if s == "*" {
		return nil
	}
	const forms = `use scheme://host[:port], e.g. "https://example.com", or "*"`
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("is not an origin (%s)", forms)
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Path != "" {
		return fmt.Errorf("is not an origin: it has more than scheme://host[:port] (did you mean %q?)", u.Scheme+"://"+u.Host)
	}
	if strings.Contains(u.Host, "*") {
		return errors.New(`has a wildcard: list each origin, or use "*" alone for any`)
	}
	return nil
}

// checkHeaderName accepts an HTTP field name (RFC 9110 token).
func checkHeaderName(s string) error {
	if s == "" {
		return errEmptyEntry
	}
	for _, r := range s {
		if r > '~' || r <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return errors.New("is not a header name")
		}
	}
	// Cablecar-* headers are Cablecar's own (SPEC §1): a client's are
	// stripped, so forwarding one could only copy Cablecar's accept
	// headers onto events.
	if n := strings.ToLower(strings.ReplaceAll(s, "_", "-")); strings.HasPrefix(n, "cablecar-") {
		return errors.New("is a Cablecar header: Cablecar sets those itself and never forwards them")
	}
	return nil
}

func checkPath(s string) error {
	if s == "" {
		return nil
	}
	if !strings.HasPrefix(s, "/") {
		return fmt.Errorf("must start with \"/\" (did you mean \"/%s\"?)", s)
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f {
			return errors.New("must not hold spaces or control characters")
		}
	}
	return nil
}
