package config

import (
	"net/url"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"
)

// mask replaces a secret wherever the config is shown.
const mask = "********"

// Effective renders c as YAML with every key, in sidecar.yaml's layout,
// secrets masked. The result loads back through Parse to the same config,
// but for the masked secrets.
func (c *Config) Effective() string {
	root := &yaml.Node{Kind: yaml.MappingNode}
	sections := map[string]*yaml.Node{"": root}
	for _, f := range theSchema().fields {
		parent := sectionNode(sections, f.key)
		name := f.key[strings.LastIndex(f.key, ".")+1:]
		parent.Content = append(parent.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Value: name},
			f.yamlValue(f.in(c)))
	}
	var b strings.Builder
	b.WriteString("# Effective configuration; secrets are masked.\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	// Encoding a tree of plain nodes into memory cannot fail.
	if err := enc.Encode(root); err != nil {
		panic("config: rendering the effective config: " + err.Error())
	}
	_ = enc.Close()
	return b.String()
}

// sectionNode returns the mapping that holds key, creating the sections
// on the way in the order keys come, which is the declaration order.
func sectionNode(sections map[string]*yaml.Node, key string) *yaml.Node {
	dot := strings.LastIndex(key, ".")
	if dot < 0 {
		return sections[""]
	}
	path := key[:dot]
	if n := sections[path]; n != nil {
		return n
	}
	parent := sectionNode(sections, path)
	n := &yaml.Node{Kind: yaml.MappingNode}
	parent.Content = append(parent.Content,
		&yaml.Node{Kind: yaml.ScalarNode, Value: path[strings.LastIndex(path, ".")+1:]}, n)
	sections[path] = n
	return n
}

func (f *field) yamlValue(v reflect.Value) *yaml.Node {
	vals := f.format(v)
	for i, s := range vals {
		switch {
		case f.secret && s != "":
			vals[i] = mask
		case strings.Contains(s, "://"):
			vals[i] = maskURL(s)
		}
	}
	if f.isList() {
		seq := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for _, s := range vals {
			seq.Content = append(seq.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s})
		}
		return seq
	}
	tag := "!!str"
	switch f.typ.Kind() {
	case reflect.Bool:
		tag = "!!bool"
	case reflect.Int:
		tag = "!!int"
	}
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: vals[0]}
}

// maskURL hides the secrets a URL may carry wherever the config is shown:
// the password of its userinfo (redis://user:pass@host; the user name
// stays, as url.URL.Redacted does) and the values of query parameters
// whose names look like secrets (password=, sentinel_password=, api_key=,
// token=, …). It does not parse the URL, so that a malformed one, which
// is what error messages show, is masked too; it would rather mask too
// much (up to the last "@") than too little.
func maskURL(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return s
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if user, _, hasPass := strings.Cut(rest[:at], ":"); hasPass {
			rest = user + ":" + mask + rest[at:]
		}
	}
	return scheme + "://" + maskQuerySecrets(rest)
}

// maskQuerySecrets hides the values of the query parameters that
// secretParam picks, with & or ; between parameters.
func maskQuerySecrets(s string) string {
	base, query, ok := strings.Cut(s, "?")
	if !ok {
		return s
	}
	var b strings.Builder
	b.WriteString(base + "?")
	for query != "" {
		end := strings.IndexAny(query, "&;")
		param, sep := query, ""
		if end >= 0 {
			param, sep, query = query[:end], query[end:end+1], query[end+1:]
		} else {
			query = ""
		}
		if k, _, hasValue := strings.Cut(param, "="); hasValue && secretParam(k) {
			param = k + "=" + mask
		}
		b.WriteString(param + sep)
	}
	return b.String()
}

// secretParam says whether a query parameter's name looks like it carries
// a secret: password, sentinel_password, api_key, key, token,
// access_token, secret, auth, sig… in any case.
func secretParam(name string) bool {
	if u, err := url.QueryUnescape(name); err == nil {
		name = u
	}
	name = strings.ToLower(name)
	for _, w := range []string{"pass", "pwd", "secret", "token", "key", "auth", "credential", "signature", "session"} {
		if strings.Contains(name, w) {
			return true
		}
	}
	return name == "sig"
}
