package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
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

const (
	defaultJWKSRefresh = time.Hour
	// A key set larger than this is refused (a broken or hostile endpoint
	// must not make Cablecar read without end).
	maxJWKSSize = 1 << 20
)

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
	// arrived is closed once the first key set with a usable key is
	// there to verify with; handshakes before it wait (SPEC §6).
	arrived    chan struct{}
	arriveOnce sync.Once
	hadKeys    atomic.Bool  // arrived is closed
	waiting    atomic.Int64 // handshakes waiting for the first key set

	// Tunables; tests shorten them.
	fetchTimeout time.Duration // one fetch of the key set
	retryMin     time.Duration // first wait after a fetch that gave no keys
	retryMax     time.Duration
	kidEvery     time.Duration // unknown-kid refreshes at most this often
	kidWait      time.Duration // a handshake waits at most this for one
	firstWait    time.Duration // a handshake waits at most this for the first key set

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
		arrived:      make(chan struct{}),
		tr:           tr,
		client:       &http.Client{Transport: limitBody{tr, maxJWKSSize}},
		fetchTimeout: 10 * time.Second,
		retryMin:     500 * time.Millisecond,
		retryMax:     30 * time.Second,
		kidEvery:     30 * time.Second,
		kidWait:      3 * time.Second,
		firstWait:    5 * time.Second,
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
				j.arrive()
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

// arrive lets waiting handshakes go once there are keys and a keyfunc to
// use them: the first fetch stores keys before run has made the keyfunc,
// so both call this, and whichever comes second opens the gate.
func (j *jwks) arrive() {
	if j.store.n.Load() > 0 && j.keyfunc.Load() != nil {
		j.arriveOnce.Do(func() {
			j.hadKeys.Store(true)
			close(j.arrived)
		})
	}
}

// waitFirst holds a handshake that came before the first key set until it
// arrives, firstWait at most: the token may well be good, and refusing it
// for want of keys only because Cablecar just started would send every
// client of a restart back with an error.
func (j *jwks) waitFirst() {
	if j.hadKeys.Load() {
		return
	}
	j.waiting.Add(1)
	defer j.waiting.Add(-1)
	t := time.NewTimer(j.firstWait)
	defer t.Stop()
	select {
	case <-j.arrived:
	case <-t.C:
	case <-j.ctx.Done():
	}
}

// status is JWKSStatus of the verifier.
func (j *jwks) status() JWKSStatus {
	s := JWKSStatus{URL: j.safeURL, Arrived: j.hadKeys.Load(), Keys: int(j.store.n.Load())}
	if e := j.lastErr.Load(); e != nil {
		s.Err = errors.New(*e)
	}
	return s
}

// key finds the key of t in the set, through keyfunc (which refreshes the
// set, rate-limited, when the kid is unknown).
func (j *jwks) key(t *jwt.Token) (any, error) {
	j.waitFirst()
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
	j.arrive()
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
