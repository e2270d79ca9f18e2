package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"
)

// JWTConfig is auth.jwt (SPEC §6). JWT is off unless HMACSecrets or
// JWKSURL is set.
type JWTConfig struct {
	// Required refuses a handshake without a valid token; when false a
	// handshake without one goes to the app without Cablecar-Claims.
	Required bool
	// HMACSecrets verify HS256/384/512 tokens, each tried in turn so that
	// the issuer can rotate; empty entries are ignored. None: HS* refused.
	HMACSecrets []string
	// JWKSURL serves the keys of RS*, PS*, ES* and EdDSA tokens (an
	// http:// or https:// URL). "": those algorithms are refused.
	JWKSURL string
	// Issuer must equal iss; "" = not checked.
	Issuer string
	// Audience must be aud or among aud; "" = not checked.
	Audience string
	// QueryParam names the query parameter that may carry the token;
	// "" = "token".
	QueryParam string
	// Leeway is the clock skew allowed on exp, nbf and iat; 0 = none.
	Leeway time.Duration
	// JWKSRefresh is how often the key set is fetched again in the
	// background; 0 = 1h. A token with an unknown kid also fetches it, at
	// most once per 30s.
	JWKSRefresh time.Duration
}

// Reasons a token is refused: VerifyError.Reason. Each is short and safe to
// show a client.
const (
	ReasonExpired      = "token expired"
	ReasonBadSignature = "bad signature"
	ReasonUnknownKID   = "unknown key id"
	ReasonAlgorithm    = "algorithm not allowed"
	ReasonIssuer       = "wrong issuer"
	ReasonAudience     = "wrong audience"
	ReasonNotYet       = "token not valid yet"
	ReasonMalformed    = "malformed token"
	ReasonNoKeys       = "no keys yet"
)

// VerifyError is a refused token. Reason is one of the Reason constants; Err
// is a sentinel (jwt.ErrTokenExpired, jwt.ErrTokenMalformed, …) for
// errors.Is, never a message that could quote the token.
type VerifyError struct {
	Reason string
	Err    error
}

func (e *VerifyError) Error() string { return "jwt: " + e.Reason }
func (e *VerifyError) Unwrap() error { return e.Err }

// Claims are what a verified token says.
type Claims struct {
	JSON    json.RawMessage // the verified payload, compact JSON (an object)
	Expires time.Time       // zero when the token has no exp
}

const (
	defaultJWKSRefresh = time.Hour
	// Larger tokens are refused before any parsing: JWTs from IdPs that
	// carry group lists reach a few KiB, and nothing legitimate needs more.
	maxTokenSize = 16 << 10
	// A key set larger than this is refused (a broken or hostile endpoint
	// must not make Cablecar read without end).
	maxJWKSSize = 1 << 20
)

// Errors of the keyfunc, told apart in Verify.
var (
	errAlgorithm  = errors.New("algorithm not allowed")
	errUnknownKID = errors.New("unknown key id")
	errNoKeys     = errors.New("no keys loaded from jwks_url yet")
	errCrit       = errors.New(`header "crit" names extensions not supported`)
)

// Verifier checks the JWT of a handshake (SPEC §6). It is safe for
// concurrent use. A nil *Verifier means JWT is off: Required is false,
// Ready nil, Close a no-op, and Verify refuses every token.
type Verifier struct {
	required   bool
	queryParam string
	issuer     string
	parser     *jwt.Parser
	keyfunc    jwt.Keyfunc // v.key, bound once so Verify does not allocate a closure
	now        func() time.Time

	// hmacKeys is a []byte or a jwt.VerificationKeySet of them, boxed once;
	// nil when no secret is set.
	hmacKeys any
	jwks     *jwks // nil without jwks_url

	results [numReasons]prometheus.Counter
}

type reason uint8

const (
	resultOK reason = iota
	resultExpired
	resultBadSignature
	resultUnknownKID
	resultAlgorithm
	resultIssuer
	resultAudience
	resultNotYet
	resultMalformed
	resultNoKeys
	numReasons
)

var reasonText = [numReasons]string{
	resultOK:           "ok",
	resultExpired:      ReasonExpired,
	resultBadSignature: ReasonBadSignature,
	resultUnknownKID:   ReasonUnknownKID,
	resultAlgorithm:    ReasonAlgorithm,
	resultIssuer:       ReasonIssuer,
	resultAudience:     ReasonAudience,
	resultNotYet:       ReasonNotYet,
	resultMalformed:    ReasonMalformed,
	resultNoKeys:       ReasonNoKeys,
}

// NewVerifier builds the verifier of cfg, or returns nil, nil when neither
// HMACSecrets nor JWKSURL is set. With a JWKS URL it fetches the key set in
// the background and returns at once: an endpoint that is down does not
// stop Cablecar from starting. Until keys arrive, asymmetric tokens are
// refused with ReasonNoKeys and Ready says why; the fetch is retried with
// backoff (up to every 30s) until it gives keys, then refreshed every
// JWKSRefresh. reg may be nil.
func NewVerifier(cfg JWTConfig, log zerolog.Logger, reg prometheus.Registerer) (*Verifier, error) {
	return newVerifier(cfg, log, reg, nil)
}

// newVerifier is NewVerifier with a hook that tests use to shorten the
// key set's timings before anything starts.
func newVerifier(cfg JWTConfig, log zerolog.Logger, reg prometheus.Registerer, tune func(*jwks)) (*Verifier, error) {
	var secrets [][]byte
	for _, s := range cfg.HMACSecrets {
		if s != "" {
			secrets = append(secrets, []byte(s))
		}
	}
	if len(secrets) == 0 && cfg.JWKSURL == "" {
		return nil, nil
	}
	v := &Verifier{
		required:   cfg.Required,
		queryParam: cfg.QueryParam,
		issuer:     cfg.Issuer,
		now:        time.Now,
	}
	if v.queryParam == "" {
		v.queryParam = "token"
	}
	switch len(secrets) {
	case 0:
	case 1:
		v.hmacKeys = secrets[0]
	default:
		set := jwt.VerificationKeySet{}
		for _, s := range secrets {
			set.Keys = append(set.Keys, s)
		}
		v.hmacKeys = set
	}
	for _, s := range secrets {
		if len(s) < 32 {
			// RFC 7518 §3.2: a key shorter than the hash is guessable offline
			// from any one token.
			log.Warn().Int("bytes", len(s)).Msg("auth.jwt.hmac_secret is shorter than 32 bytes; use a longer random secret")
			break
		}
	}

	leeway := max(cfg.Leeway, 0)
	opts := []jwt.ParserOption{
		jwt.WithLeeway(leeway),
		jwt.WithIssuedAt(),
		jwt.WithStrictDecoding(),
		jwt.WithTimeFunc(func() time.Time { return v.now() }),
		// The allow-list of algorithms is in v.key, not WithValidMethods:
		// that option refuses before the keyfunc as "signature invalid",
		// and the reason given would be wrong. jwt verifies nothing without
		// calling the keyfunc first.
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	v.keyfunc = v.key

	results := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cablecar_jwt_verifications_total",
		Help: "JWTs verified at the handshake, by result: ok or why the token was refused.",
	}, []string{"result"})
	for r := range numReasons {
		v.results[r] = results.WithLabelValues(strings.ReplaceAll(reasonText[r], " ", "_"))
	}
	collectors := []prometheus.Collector{results}

	if cfg.JWKSURL != "" {
		j, err := newJWKS(cfg.JWKSURL, cfg.JWKSRefresh, log)
		if err != nil {
			return nil, err
		}
		if tune != nil {
			tune(j)
		}
		v.jwks = j
		collectors = append(collectors, j.refreshes, j.keysGauge)
	}
	if reg != nil {
		for _, c := range collectors {
			if err := reg.Register(c); err != nil {
				if v.jwks != nil {
					v.jwks.cancel() // not started: nothing to wait for
				}
				return nil, fmt.Errorf("auth.jwt metrics: %w", err)
			}
		}
	}
	if v.jwks != nil {
		v.jwks.start()
	}
	return v, nil
}

// Required reports whether a handshake without a valid token is refused.
func (v *Verifier) Required() bool { return v != nil && v.required }

// QueryParam is the query parameter that may carry the token ("" when JWT
// is off: then no parameter is taken or stripped).
func (v *Verifier) QueryParam() string {
	if v == nil {
		return ""
	}
	return v.queryParam
}

// Ready returns nil when the verifier can verify the tokens it is
// configured for: always with HMAC secrets alone; with a JWKS URL once a
// fetch has given at least one key. Otherwise the error says why, naming
// the URL (without credentials) and the last fetch error. Keys once loaded
// are kept when later refreshes fail, so this only fails at start-up or
// when the endpoint serves an empty set.
func (v *Verifier) Ready(context.Context) error {
	if v == nil || v.jwks == nil {
		return nil
	}
	return v.jwks.ready()
}

// Close stops fetching keys; Verify keeps working with the keys it has.
// It is idempotent.
func (v *Verifier) Close() {
	if v != nil && v.jwks != nil {
		v.jwks.close()
	}
}

// Verify checks raw and returns its claims, or a *VerifyError: the
// algorithm must be configured (HS* with hmac_secret, the others with
// jwks_url; never none), the signature valid, exp not passed and nbf and
// iat not in the future (each give or take the leeway), and iss and aud as
// configured. A token whose kid is unknown makes the key set be fetched
// again, at most once per 30s: that one call may take up to 3s; the others
// are refused at once.
func (v *Verifier) Verify(raw string) (Claims, error) {
	if v == nil {
		return Claims{}, &VerifyError{Reason: ReasonAlgorithm, Err: errAlgorithm}
	}
	if len(raw) > maxTokenSize {
		return Claims{}, v.refuse(resultMalformed, jwt.ErrTokenMalformed)
	}
	var c tokenClaims
	_, err := v.parser.ParseWithClaims(raw, &c, v.keyfunc)
	if c.raw == nil && (err == nil || errors.Is(err, jwt.ErrTokenInvalidClaims)) {
		// A payload of null decodes without calling UnmarshalJSON: the
		// claims would be checked as empty.
		return Claims{}, v.refuse(resultMalformed, jwt.ErrTokenMalformed)
	}
	if err != nil {
		return Claims{}, v.refuse(v.classify(err, &c))
	}
	v.results[resultOK].Inc()
	out := Claims{JSON: c.raw}
	if c.ExpiresAt != nil {
		out.Expires = c.ExpiresAt.Time
	}
	return out, nil
}

func (v *Verifier) refuse(r reason, sentinel error) *VerifyError {
	v.results[r].Inc()
	return &VerifyError{Reason: reasonText[r], Err: sentinel}
}

// classify maps an error of the jwt parser to a reason and the sentinel
// that VerifyError carries. The order matters: the keyfunc's own errors
// arrive wrapped in ErrTokenUnverifiable, and several claim errors may come
// joined (the first in this order wins).
func (v *Verifier) classify(err error, c *tokenClaims) (reason, error) {
	for _, k := range []struct {
		err error
		r   reason
	}{
		{errNoKeys, resultNoKeys},
		{errUnknownKID, resultUnknownKID},
		{errAlgorithm, resultAlgorithm},
		{errCrit, resultMalformed},
		{jwt.ErrTokenMalformed, resultMalformed},
		// alg missing, or one jwt does not know.
		{jwt.ErrTokenUnverifiable, resultAlgorithm},
		{jwt.ErrTokenSignatureInvalid, resultBadSignature},
		{jwt.ErrTokenExpired, resultExpired},
		{jwt.ErrTokenNotValidYet, resultNotYet},
		{jwt.ErrTokenUsedBeforeIssued, resultNotYet},
		{jwt.ErrTokenInvalidIssuer, resultIssuer},
		{jwt.ErrTokenInvalidAudience, resultAudience},
	} {
		if errors.Is(err, k.err) {
			if k.err == jwt.ErrTokenUnverifiable {
				return k.r, errAlgorithm
			}
			return k.r, k.err
		}
	}
	if errors.Is(err, jwt.ErrTokenRequiredClaimMissing) {
		// iss or aud is missing while configured.
		if v.issuer != "" && c.Issuer == "" {
			return resultIssuer, jwt.ErrTokenInvalidIssuer
		}
		return resultAudience, jwt.ErrTokenInvalidAudience
	}
	return resultMalformed, jwt.ErrTokenMalformed
}

// key is the jwt.Keyfunc: the allow-list of algorithms, and the key for
// each. HS* keys come only from hmac_secret and the others only from the
// key set, so a public key can never be used as an HMAC secret.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		// RFC 7515 §4.1.11: a token that needs extensions the verifier
		// does not know (none are known here) is invalid.
		return nil, errCrit
	}
	switch t.Method.Alg() {
	case "HS256", "HS384", "HS512":
		if v.hmacKeys == nil {
			return nil, errAlgorithm
		}
		return v.hmacKeys, nil
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA":
		if v.jwks == nil {
			return nil, errAlgorithm
		}
		return v.jwks.key(t)
	}
	return nil, errAlgorithm
}

// tokenClaims decodes the registered claims for the validator and keeps
// the payload, compacted, for Claims.JSON.
type tokenClaims struct {
	jwt.RegisteredClaims
	raw json.RawMessage
}

func (c *tokenClaims) UnmarshalJSON(b []byte) error {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return errors.New("payload is not a JSON object")
	}
	if err := json.Unmarshal(b, &c.RegisteredClaims); err != nil {
		return err
	}
	if !bytes.ContainsAny(b, " \t\r\n") {
		// Already compact, as issuers write it: json.Unmarshal has checked
		// it, and b is only lent to UnmarshalJSON.
		c.raw = bytes.Clone(b)
		return nil
	}
	var buf bytes.Buffer
	buf.Grow(len(b))
	if err := json.Compact(&buf, b); err != nil {
		return err
	}
	c.raw = buf.Bytes()
	return nil
}

// jwks holds the keys of jwks_url. keyfunc and jwkset do the fetching,
// caching, background refresh and rate-limited refresh on an unknown kid;
// this adds a start that does not block, retries while there are no keys,
// metrics, and a size limit on what is read.
type jwks struct {
	url      string // as configured
	safeURL  string // without credentials, for logs and Ready
	refresh  time.Duration
	log      zerolog.Logger
	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{}
	closing  sync.Once
	tr       *http.Transport
	client   *http.Client
	store    *keyStore
	keyfunc  atomic.Pointer[jwt.Keyfunc] // set once the storage exists
	lastErr  atomic.Pointer[string]      // of the last failed fetch; nil after a good one
	failures atomic.Int64                // fetches failed in a row

	// Tunables; tests shorten them.
	fetchTimeout time.Duration // one fetch of the key set
	retryMin     time.Duration // first wait after a fetch that gave no keys
	retryMax     time.Duration
	kidEvery     time.Duration // unknown-kid refreshes at most this often
	kidWait      time.Duration // a handshake waits at most this for one

	refreshes *prometheus.CounterVec
	fetchOK   prometheus.Counter
	fetchErr  prometheus.Counter
	keysGauge prometheus.Gauge
}

func newJWKS(rawURL string, refresh time.Duration, log zerolog.Logger) (*jwks, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("auth.jwt.jwks_url: %q is not an http:// or https:// URL", rawURL)
	}
	if refresh <= 0 {
		refresh = defaultJWKSRefresh
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	j := &jwks{
		url:          rawURL,
		safeURL:      u.Redacted(),
		refresh:      refresh,
		log:          log,
		done:         make(chan struct{}),
		tr:           tr,
		client:       &http.Client{Transport: limitBody{tr, maxJWKSSize}},
		fetchTimeout: 10 * time.Second,
		retryMin:     500 * time.Millisecond,
		retryMax:     30 * time.Second,
		kidEvery:     30 * time.Second,
		kidWait:      3 * time.Second,
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cablecar_jwks_refreshes_total",
			Help: "Fetches of the JWT key set (auth.jwt.jwks_url), by outcome (ok, error).",
		}, []string{"outcome"}),
		keysGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cablecar_jwks_keys",
			Help: "Keys in the JWT key set as last fetched.",
		}),
	}
	j.fetchOK = j.refreshes.WithLabelValues("ok")
	j.fetchErr = j.refreshes.WithLabelValues("error")
	j.store = &keyStore{MemoryJWKSet: jwkset.NewMemoryStorage(), j: j}
	j.ctx, j.cancel = context.WithCancel(context.Background())
	return j, nil
}

func (j *jwks) options() jwkset.HTTPClientStorageOptions {
	return jwkset.HTTPClientStorageOptions{
		Client:                    j.client,
		Ctx:                       j.ctx,
		HTTPTimeout:               j.fetchTimeout,
		NoErrorReturnFirstHTTPReq: true,
		RefreshErrorHandler:       j.fetchFailed,
		RefreshInterval:           j.refresh,
		Storage:                   j.store,
	}
}

func (j *jwks) start() { go j.run() }

func (j *jwks) run() {
	defer close(j.done)
	// The first fetch happens inside NewStorageFromHTTP, which waits for
	// it: here, not in NewVerifier, so a slow endpoint does not hold up
	// start-up. It also starts jwkset's refresh goroutine, which ends with
	// j.ctx.
	remote, err := jwkset.NewStorageFromHTTP(j.url, j.options())
	if err == nil {
		var st jwkset.Storage
		st, err = jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
			HTTPURLs:          map[string]jwkset.Storage{j.url: remote},
			RateLimitWaitMax:  j.kidWait,
			RefreshUnknownKID: rate.NewLimiter(rate.Every(j.kidEvery), 1),
		})
		if err == nil {
			var kf keyfunc.Keyfunc
			kf, err = keyfunc.New(keyfunc.Options{
				Ctx:     j.ctx,
				Storage: st,
				// A key published for encryption does not verify signatures.
				UseWhitelist: []jwkset.USE{jwkset.UseSig, ""},
			})
			if err == nil {
				f := kf.KeyfuncCtx(j.ctx)
				j.keyfunc.Store(&f)
			}
		}
	}
	if err != nil {
		// Not expected: the URL was checked in newJWKS.
		j.fetchFailed(j.ctx, err)
		return
	}
	j.retry()
}

// retry fetches again, with backoff and jitter, until a fetch gives keys:
// jwkset would otherwise wait a whole refresh interval after a failed
// first fetch. Unknown-kid refreshes are not used for this, so that they
// stay free for rotations.
func (j *jwks) retry() {
	opts := j.options()
	opts.RefreshInterval = 0 // one fetch, no goroutine
	wait := j.retryMin
	for j.store.n.Load() == 0 {
		t := time.NewTimer(wait/2 + rand.N(wait/2+1))
		select {
		case <-j.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if j.store.n.Load() > 0 {
			return
		}
		// Fetches into j.store; a failure reaches fetchFailed.
		_, _ = jwkset.NewStorageFromHTTP(j.url, opts)
		wait = min(2*wait, j.retryMax)
	}
}

func (j *jwks) close() {
	j.closing.Do(func() {
		j.cancel()
		<-j.done
		j.tr.CloseIdleConnections()
	})
}

func (j *jwks) ready() error {
	if j.store.n.Load() > 0 {
		return nil
	}
	if e := j.lastErr.Load(); e != nil {
		return fmt.Errorf("auth.jwt.jwks_url %s: no keys yet: %s", j.safeURL, *e)
	}
	return fmt.Errorf("auth.jwt.jwks_url %s: no keys yet: first fetch in progress", j.safeURL)
}

// key finds the key of t in the set, through keyfunc (which refreshes the
// set, rate-limited, when the kid is unknown).
func (j *jwks) key(t *jwt.Token) (any, error) {
	f := j.keyfunc.Load()
	if f == nil {
		return nil, errNoKeys
	}
	k, err := (*f)(t)
	if err != nil {
		if j.store.n.Load() == 0 {
			return nil, errNoKeys
		}
		// keyfunc refuses a key whose alg or use does not fit the token,
		// and a kid it cannot find (or not yet refresh for): tell apart.
		if kid, ok := t.Header["kid"].(string); ok {
			if _, e := j.store.KeyRead(j.ctx, kid); e == nil {
				return nil, errAlgorithm
			}
		}
		return nil, errUnknownKID
	}
	if set, ok := k.(jwt.VerificationKeySet); ok && len(set.Keys) == 0 {
		// No kid, and no key in the set for this alg.
		if j.store.n.Load() == 0 {
			return nil, errNoKeys
		}
		return nil, errAlgorithm
	}
	return k, nil
}

func (j *jwks) fetchFailed(_ context.Context, err error) {
	if j.ctx.Err() != nil {
		return // closing
	}
	j.fetchErr.Inc()
	msg := err.Error()
	prev := j.lastErr.Swap(&msg)
	n := j.failures.Add(1)
	ev := j.log.Debug()
	if n == 1 || prev == nil || *prev != msg {
		ev = j.log.Warn()
	}
	ev.Str("url", j.safeURL).Str("error", msg).Int64("failures", n).Int64("keys", j.store.n.Load()).
		Msg("fetching the JWT key set failed; keeping the keys already loaded")
}

func (j *jwks) fetched(n int) {
	j.fetchOK.Inc()
	j.keysGauge.Set(float64(n))
	j.failures.Store(0)
	prev := j.store.n.Swap(int64(n))
	if n == 0 {
		msg := "the key set at " + j.safeURL + " has no usable signing keys"
		j.lastErr.Store(&msg)
		j.log.Warn().Str("url", j.safeURL).Msg("the JWT key set has no usable keys")
		return
	}
	j.lastErr.Store(nil)
	ev := j.log.Debug()
	if prev == 0 {
		ev = j.log.Info()
	}
	ev.Str("url", j.safeURL).Int("keys", n).Msg("JWT key set loaded")
}

// keyStore is jwkset's memory storage, counting keys: jwkset calls
// KeyReplaceAll once for each successful fetch, and never otherwise here.
type keyStore struct {
	*jwkset.MemoryJWKSet
	j *jwks
	n atomic.Int64
}

func (s *keyStore) KeyReplaceAll(ctx context.Context, given []jwkset.JWK) error {
	err := s.MemoryJWKSet.KeyReplaceAll(ctx, given)
	s.j.fetched(len(given))
	return err
}

var _ jwkset.Storage = (*keyStore)(nil)

// limitBody makes a response body fail once it passes max bytes: jwkset
// decodes the key set straight from the body.
type limitBody struct {
	rt  http.RoundTripper
	max int64
}

func (l limitBody) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.rt.RoundTrip(r)
	if err == nil {
		resp.Body = &limitedBody{ReadCloser: resp.Body, n: l.max}
	}
	return resp, err
}

type limitedBody struct {
	io.ReadCloser
	n int64
}

var errJWKSTooLarge = fmt.Errorf("key set larger than %d bytes", maxJWKSSize)

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		// At the limit: fine if the body ends here.
		var one [1]byte
		if n, err := b.ReadCloser.Read(one[:]); n == 0 && err != nil {
			return 0, err
		}
		return 0, errJWKSTooLarge
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.ReadCloser.Read(p)
	b.n -= int64(n)
	return n, err
}
