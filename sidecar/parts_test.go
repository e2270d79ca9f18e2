package sidecar

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cablecar/cablecar/config"
)

// notInParts are the config keys that New, Run or NewLogger use directly
// rather than handing them to a part, and where.
var notInParts = map[string]string{
	"listen":           "New: the front listener",
	"shutdown_timeout": "Run: shutdown",
	"admin.listen":     "New: the admin listener",
	"admin.api_key":    "New: admin.Server.EnableAPI",
	"log.level":        "NewLogger",
	"log.format":       "NewLogger",
	// Read and validated, not acted on yet: session restore is SPEC §10.
}

// Every config key changes what some part is given, or is listed in
// notInParts: a key validated, documented and wired to nothing does
// silently nothing (proxy.client_body_timeout, websocket.send_queue_bytes
// and callback.close_retry_for once did).
func TestEveryKeyReachesAPart(t *testing.T) {
	base := mustParts(t, config.Default())
	keys := configKeys(reflect.TypeFor[config.Config](), "", nil)
	if len(keys) < 30 {
		t.Fatalf("found only %d config keys: the walk below no longer matches config's tags", len(keys))
	}
	for _, k := range keys {
		t.Run(k.name, func(t *testing.T) {
			cfg := config.Default()
			changeValue(t, reflect.ValueOf(cfg).Elem().FieldByIndex(k.index))
			reached := !reflect.DeepEqual(mustParts(t, cfg), base)
			where, listed := notInParts[k.name]
			switch {
			case !reached && !listed:
				t.Errorf("changing %s changes no part's config: pass it on in sidecar/parts.go", k.name)
			case reached && listed:
				t.Errorf("%s reaches a part: drop it from notInParts (%q)", k.name, where)
			}
		})
	}
	for name := range notInParts {
		if !slices.ContainsFunc(keys, func(k configKey) bool { return k.name == name }) {
			t.Errorf("notInParts lists %s, which is no config key", name)
		}
	}
}

// The part configs are built the same way every time, or the test above
// would find every key "reached".
func TestPartConfigsDeterministic(t *testing.T) {
	a, b := mustParts(t, config.Default()), mustParts(t, config.Default())
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("two builds from the same config differ:\n%+v\n%+v", a, b)
	}
}

// A bad origin is reported by its key before anything is built.
func TestPartConfigsBadOrigin(t *testing.T) {
	cfg := config.Default()
	cfg.WebSocket.AllowedOrigins = []string{"not an origin"}
	if _, err := partConfigs(cfg, "n1"); err == nil || !strings.Contains(err.Error(), "websocket.allowed_origins") {
		t.Fatalf("err %v, want one naming websocket.allowed_origins", err)
	}
}

// What a part decides from two keys: the per-client cap of the proxy is
// proxy.max_conns_per_client, or a quarter of proxy.max_conns.
func TestProxyConnsPerClient(t *testing.T) {
	cfg := config.Default()
	cfg.Proxy.MaxConns = 100
	if got := mustParts(t, cfg).proxy.MaxConnsPerClient; got != 25 {
		t.Errorf("MaxConnsPerClient %d, want a quarter of 100", got)
	}
	cfg.Proxy.MaxConnsPerClient = 7
	if got := mustParts(t, cfg).proxy.MaxConnsPerClient; got != 7 {
		t.Errorf("MaxConnsPerClient %d, want 7", got)
	}
}

func mustParts(t *testing.T, cfg *config.Config) parts {
	t.Helper()
	p, err := partConfigs(cfg, "n1")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type configKey struct {
	name  string
	index []int
}

// configKeys walks Config's key tags as the config package does: a struct
// field is a section, except Upstream, which is one value.
func configKeys(t reflect.Type, prefix string, index []int) []configKey {
	var keys []configKey
	for i := range t.NumField() {
		sf := t.Field(i)
		name := prefix + sf.Tag.Get("key")
		idx := append(index[:len(index):len(index)], i)
		if sf.Type.Kind() == reflect.Struct && sf.Type != reflect.TypeFor[config.Upstream]() {
			keys = append(keys, configKeys(sf.Type, name+".", idx)...)
			continue
		}
		keys = append(keys, configKey{name: name, index: idx})
	}
	return keys
}

// changeValue sets v to another value of its type, one that every mapping
// accepts (an origin is a valid origin).
func changeValue(t *testing.T, v reflect.Value) {
	t.Helper()
	switch {
	case v.Type() == reflect.TypeFor[time.Duration]():
		v.SetInt(v.Int() + int64(7*time.Millisecond))
	case v.Type() == reflect.TypeFor[config.Upstream]():
		v.Set(reflect.ValueOf(config.Upstream{Network: "unix", Address: "/run/other.sock"}))
	case v.Type() == reflect.TypeFor[[]netip.Prefix]():
		v.Set(reflect.Append(v, reflect.ValueOf(netip.MustParsePrefix("192.0.2.0/24"))))
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.String:
		v.Set(reflect.Append(v, reflect.ValueOf("https://other.example")))
	case v.Kind() == reflect.String:
		v.SetString(v.String() + "x")
	case v.Kind() == reflect.Int || v.Kind() == reflect.Int64:
		v.SetInt(v.Int() + 7)
	case v.Kind() == reflect.Bool:
		v.SetBool(!v.Bool())
	default:
		t.Fatalf("no way to change a %s: teach changeValue", v.Type())
	}
}
