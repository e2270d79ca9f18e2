package auth

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/config"
)

// auth.jwt.query_param has its default in config's tags (the source,
// which the sidecar always passes) and here for an empty JWTConfig; they
// must not drift.
func TestDefaultsMatchConfig(t *testing.T) {
	v, err := NewVerifier(JWTConfig{HMACSecrets: []string{"s"}}, zerolog.Nop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if want := config.Default().Auth.JWT.QueryParam; v.queryParam != want {
		t.Errorf("auth.jwt.query_param: an empty JWTConfig means %q, config's default is %q", v.queryParam, want)
	}
}
