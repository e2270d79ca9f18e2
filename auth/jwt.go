package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
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
// show a client. All but ReasonNoKeys say the token is bad; ReasonNoKeys
// says Cablecar cannot tell yet (SPEC §6 answers it 503, not 401).
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
	JSON    json.RawMessage // the verified payload, compact JSON (an object), numbers as written
	Expires time.Time       // zero when the token has no exp
	// Subject is sub as a string: a numeric sub (Rails' user.id) in plain
	// decimal, 42 as "42"; "" when the token has none.
	Subject string
}

// Larger tokens are refused before any parsing: JWTs from IdPs that carry
// group lists reach a few KiB, and nothing legitimate needs more.
const maxTokenSize = 16 << 10

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
// stop Cablecar from starting. Until keys arrive, an asymmetric token waits
// for them up to 5s, then is refused with ReasonNoKeys, and Ready says why; the fetch is retried with
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

// JWKSStatus is the state of the key set of auth.jwt.jwks_url, for
// /readyz: "jwks: ok" once Arrived, else "jwks: " and why.
type JWKSStatus struct {
	URL     string // jwks_url without credentials
	Arrived bool   // the first key set with a usable key has arrived
	Keys    int    // usable keys in the set as last fetched
	// Err is why the last fetch failed, or why the set it gave is of no
	// use (no signing keys); nil when it succeeded, or while the first
	// fetch is under way. Keys once arrived are kept through failures.
	Err error
}

// JWKSStatus reports on the key set; ok is false when there is none to
// report on (no jwks_url, or JWT off).
func (v *Verifier) JWKSStatus() (s JWKSStatus, ok bool) {
	if v == nil || v.jwks == nil {
		return JWKSStatus{}, false
	}
	return v.jwks.status(), true
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
// are refused at once. Before the first key set from jwks_url arrived, an
// asymmetric token waits for it, up to 5s.
//
// A registered claim of the wrong type makes the token malformed: exp, nbf
// and iat must be numbers, iss a string, aud a string or list of strings,
// sub a string or a number (null counts as absent).
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
	out := Claims{JSON: c.raw, Subject: c.sub}
	if c.exp != nil {
		out.Expires = c.exp.Time
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
		if v.issuer != "" && c.iss == "" {
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
