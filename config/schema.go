package config

import (
	"fmt"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
)

// field is one settable key, as described by the struct tags on Config.
type field struct {
	key    string // dotted, e.g. "proxy.connect_timeout"
	env    string // e.g. "CABLECAR_PROXY_CONNECT_TIMEOUT"
	index  []int  // path from Config, for reflect.Value.FieldByIndex
	typ    reflect.Type
	def    string // default, in environment-variable syntax
	secret bool
	check  string   // name in checks, or ""
	enum   []string // accepted values, or nil
	size   bool     // int64 bytes with KiB/MiB/GiB suffixes
	zero   bool     // a duration that may be 0s (it then means "none")
	min    *int64
	max    *int64
}

// schema is the walk of Config's tags, done once.
type schema struct {
	fields   []*field          // in declaration order, which Effective and sidecar.yaml follow
	byKey    map[string]*field // dotted key → field
	byEnv    map[string]*field
	sections map[string]bool // dotted keys that hold other keys: "proxy", "auth.jwt"
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	upstreamType = reflect.TypeFor[Upstream]()
	prefixType   = reflect.TypeFor[netip.Prefix]()
)

const envPrefix = "CABLECAR_"

// configEnv names the config file when -config is absent. It is not a key.
const configEnv = envPrefix + "CONFIG"

var theSchema = sync.OnceValue(func() *schema {
	s := &schema{byKey: map[string]*field{}, byEnv: map[string]*field{}, sections: map[string]bool{}}
	s.walk(reflect.TypeFor[Config](), "", nil)
	return s
})

func (s *schema) walk(t reflect.Type, prefix string, index []int) {
	for i := range t.NumField() {
		sf := t.Field(i)
		name, ok := sf.Tag.Lookup("key")
		if !ok {
			panic("config: field " + t.Name() + "." + sf.Name + " has no key tag")
		}
		key := prefix + name
		idx := append(index[:len(index):len(index)], i)
		if sf.Type.Kind() == reflect.Struct && sf.Type != upstreamType {
			s.sections[key] = true
			s.walk(sf.Type, key+".", idx)
			continue
		}
		f := newField(key, idx, sf)
		s.fields = append(s.fields, f)
		s.byKey[key] = f
		s.byEnv[f.env] = f
	}
}

func newField(key string, index []int, sf reflect.StructField) *field {
	f := &field{
		key:    key,
		env:    envName(key),
		index:  index,
		typ:    sf.Type,
		def:    sf.Tag.Get("default"),
		secret: sf.Tag.Get("secret") == "true",
		check:  sf.Tag.Get("check"),
		size:   sf.Tag.Get("size") == "true",
		zero:   sf.Tag.Get("zero") == "ok",
	}
	if e := sf.Tag.Get("enum"); e != "" {
		f.enum = strings.Split(e, "|")
	}
	if f.check != "" && checks[f.check] == nil {
		panic("config: " + key + ": unknown check " + f.check)
	}
	f.min = f.bound(sf.Tag.Get("min"))
	f.max = f.bound(sf.Tag.Get("max"))
	return f
}

func (f *field) bound(tag string) *int64 {
	if tag == "" {
		return nil
	}
	parse := func(s string) (int64, error) { return strconv.ParseInt(s, 10, 64) }
	if f.size {
		parse = parseSize
	}
	n, err := parse(tag)
	if err != nil {
		panic("config: " + f.key + ": bad bound " + tag)
	}
	return &n
}

// envName is the environment variable that sets key.
func envName(key string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

func lookupField(key string) *field {
	f := theSchema().byKey[key]
	if f == nil {
		panic("config: no key " + key)
	}
	return f
}

func (f *field) isList() bool { return f.typ.Kind() == reflect.Slice }

// isText says whether an empty value is a value (the empty string) rather
// than a missing one.
func (f *field) isText() bool { return f.typ.Kind() == reflect.String || f.isList() }

func (f *field) in(c *Config) reflect.Value {
	return reflect.ValueOf(c).Elem().FieldByIndex(f.index)
}

// applyDefaults sets every field from its default tag. A tag that does not
// parse is a programming error, caught by the tests.
func applyDefaults(c *Config) {
	for _, f := range theSchema().fields {
		var err error
		if f.isList() {
			_, err = f.setList(f.in(c), splitList(f.def))
		} else {
			err = f.setScalar(f.in(c), f.def)
		}
		if err != nil {
			panic(fmt.Sprintf("config: default of %s: %v", f.key, err))
		}
	}
}

// splitList reads a list written as an environment variable: entries
// separated by commas, spaces around them ignored.
func splitList(s string) []string {
	return trimList(strings.Split(s, ","))
}

// trimList drops the spaces around each entry, and the empty entries that
// a trailing comma leaves: they say nothing, and would only turn into
// surprises such as an empty secret.
func trimList(items []string) []string {
	out := items[:0:0]
	for _, it := range items {
		if it = strings.TrimSpace(it); it != "" {
			out = append(out, it)
		}
	}
	return out
}

// setScalar parses raw into dst. The error says what is wrong with raw,
// to follow the quoted value in a message.
func (f *field) setScalar(dst reflect.Value, raw string) error {
	if raw == "" && !f.isText() {
		return errNoValue
	}
	switch {
	case f.typ == durationType:
		d, err := parseDuration(raw, f.zero)
		if err != nil {
			return err
		}
		dst.SetInt(int64(d))
	case f.typ == upstreamType:
		u, err := parseUpstream(raw)
		if err != nil {
			return err
		}
		dst.Set(reflect.ValueOf(u))
	case f.typ.Kind() == reflect.Int || f.typ.Kind() == reflect.Int64:
		n, err := f.parseInt(raw)
		if err != nil {
			return err
		}
		dst.SetInt(n)
	case f.typ.Kind() == reflect.Bool:
		b, err := parseBool(raw)
		if err != nil {
			return err
		}
		dst.SetBool(b)
	case f.typ.Kind() == reflect.String:
		s, err := f.checkString(raw)
		if err != nil {
			return err
		}
		dst.SetString(s)
	default:
		panic("config: " + f.key + ": no parser for " + f.typ.String())
	}
	return nil
}

func (f *field) parseInt(raw string) (int64, error) {
	var n int64
	var err error
	if f.size {
		n, err = parseSize(raw)
	} else {
		n, err = parseInt(raw)
	}
	if err != nil {
		return 0, err
	}
	if (f.min != nil && n < *f.min) || (f.max != nil && n > *f.max) {
		return 0, f.rangeError()
	}
	return n, nil
}

func (f *field) rangeError() error {
	num := func(n int64) string {
		if f.size {
			return formatSize(n)
		}
		return strconv.FormatInt(n, 10)
	}
	switch {
	case f.min != nil && f.max != nil:
		return fmt.Errorf("is out of range (%s to %s)", num(*f.min), num(*f.max))
	case f.min != nil:
		return fmt.Errorf("is too small (at least %s)", num(*f.min))
	default:
		return fmt.Errorf("is too large (at most %s)", num(*f.max))
	}
}

// checkString validates a string or one list entry, returning it in its
// canonical form (enums are lower-cased).
func (f *field) checkString(s string) (string, error) {
	if f.enum != nil {
		for _, e := range f.enum {
			if strings.EqualFold(s, e) {
				return e, nil
			}
		}
		return "", fmt.Errorf("is not one of %s", strings.Join(f.enum, ", "))
	}
	if f.check != "" {
		if err := checks[f.check](s); err != nil {
			return "", err
		}
	}
	return s, nil
}

// setList parses items into the slice dst. On error it also returns the
// entry at fault, which is what a message should quote. An empty list is
// stored as nil so that every way of saying "none" compares equal.
func (f *field) setList(dst reflect.Value, items []string) (string, error) {
	if len(items) == 0 {
		dst.Set(reflect.Zero(f.typ))
		return "", nil
	}
	out := reflect.MakeSlice(f.typ, len(items), len(items))
	for i, it := range items {
		if it == "" {
			return it, errEmptyEntry
		}
		switch f.typ.Elem() {
		case prefixType:
			p, err := parsePrefix(it)
			if err != nil {
				return it, err
			}
			out.Index(i).Set(reflect.ValueOf(p))
		default:
			s, err := f.checkString(it)
			if err != nil {
				return it, err
			}
			out.Index(i).SetString(s)
		}
	}
	dst.Set(out)
	return "", nil
}

// format renders a value as the config accepts it; lists give one string
// per entry. Secrets are returned as they are: masking is the caller's.
func (f *field) format(v reflect.Value) []string {
	if f.isList() {
		out := make([]string, v.Len())
		for i := range out {
			out[i] = fmt.Sprint(v.Index(i).Interface())
		}
		return out
	}
	switch {
	case f.typ == durationType:
		return []string{formatDuration(time.Duration(v.Int()))}
	case f.size:
		return []string{formatSize(v.Int())}
	}
	return []string{fmt.Sprint(v.Interface())}
}

// formatDefault is the default as a person would write it, for messages.
func (f *field) formatDefault() string {
	if f.def == "" {
		return `""`
	}
	return f.def
}
