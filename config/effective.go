package config

import (
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
		case f.check == "broker_url":
			vals[i] = maskURLPassword(s)
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

// maskURLPassword hides the password of a URL such as
// redis://user:pass@host. It does not parse the URL, so that a malformed
// one, which is what error messages show, is masked too; it would rather
// mask too much (up to the last "@") than too little.
func maskURLPassword(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return s
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if user, _, hasPass := strings.Cut(rest[:at], ":"); hasPass {
			rest = user + ":" + mask + rest[at:]
		}
	}
	return scheme + "://" + maskQueryPasswords(rest)
}

// maskQueryPasswords hides the values of query parameters that carry
// passwords (go-redis's sentinel URLs take the primary's as password= and
// the sentinels' as sentinel_password=).
func maskQueryPasswords(s string) string {
	base, query, ok := strings.Cut(s, "?")
	if !ok {
		return s
	}
	parts := strings.Split(query, "&")
	for i, p := range parts {
		k, _, hasValue := strings.Cut(p, "=")
		if hasValue && strings.Contains(strings.ToLower(k), "password") {
			parts[i] = k + "=" + mask
		}
	}
	return base + "?" + strings.Join(parts, "&")
}
