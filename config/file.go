package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// loadFile applies the YAML file at path; pathSource says who named it.
func (l *loader) loadFile(path, pathSource string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return &Error{Key: "config file", Msg: err.Error(), Source: pathSource}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF):
		return nil // an empty file changes nothing
	case err != nil:
		return &Error{Key: "config file", Msg: err.Error(), Source: path}
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return &Error{Key: "config file", Msg: "holds more than one YAML document (remove the extra ---)", Source: path}
	}
	y := yamlFile{l: l, path: path}
	if len(doc.Content) == 0 {
		return nil
	}
	root := resolve(doc.Content[0])
	if isNull(root) {
		return nil
	}
	if root.Kind != yaml.MappingNode {
		return &Error{Key: "config file", Msg: "must be a mapping of keys (e.g. listen: \":3000\"), not " + kindName(root), Source: y.at(root)}
	}
	return y.mapping(root, "")
}

type yamlFile struct {
	l    *loader
	path string
}

func (y yamlFile) at(n *yaml.Node) string {
	return y.path + " line " + strconv.Itoa(n.Line)
}

// mapping applies one mapping node whose keys live under prefix.
func (y yamlFile) mapping(n *yaml.Node, prefix string) error {
	s := theSchema()
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return &Error{Key: "config file", Msg: "has a key that is not a plain name", Source: y.at(k)}
		}
		key := prefix + k.Value
		if k.Value == "<<" {
			return &Error{Key: key, Msg: "merge keys are not supported (write the keys out)", Source: y.at(k)}
		}
		if strings.Contains(k.Value, ".") && (s.byKey[key] != nil || s.sections[key]) {
			// Were "proxy.connect_timeout: 5s" read, the same key could
			// also be set nested in the same file; one spelling keeps
			// duplicates detectable.
			return &Error{Key: key, Msg: "unknown key (write sections nested, e.g. proxy: {connect_timeout: 5s})", Source: y.at(k)}
		}
		if line, dup := seen[key]; dup {
			return &Error{Key: key, Msg: fmt.Sprintf("is set twice (first at line %d)", line), Source: y.at(k)}
		}
		seen[key] = k.Line
		if err := y.entry(s, key, k, v); err != nil {
			return err
		}
	}
	return nil
}

func (y yamlFile) entry(s *schema, key string, k, v *yaml.Node) error {
	if f := s.byKey[key]; f != nil {
		return y.value(f, v)
	}
	if !s.sections[key] {
		tail := key[strings.LastIndex(key, ".")+1:]
		return &Error{Key: key, Msg: "unknown key" + didYouMean(suggest(key, tail, knownKeys(), ".")), Source: y.at(k)}
	}
	// A section left with every key commented out is empty, not wrong.
	if isNull(v) {
		return nil
	}
	if v.Kind != yaml.MappingNode {
		return &Error{Key: key, Msg: "must be a mapping of " + key + ".* keys, not " + kindName(v), Source: y.at(v)}
	}
	return y.mapping(v, key+".")
}

// value applies the value node of a leaf key. An empty or null value
// means the empty string or list for text and list keys, and is an error
// for every other key: "timeout:" with nothing after it is more likely an
// unfinished edit than a wish for the default.
func (y yamlFile) value(f *field, v *yaml.Node) error {
	if f.isList() {
		items, err := y.listItems(f, v)
		if err != nil {
			return err
		}
		return y.l.setList(f, items, y.at(v))
	}
	if v.Kind != yaml.ScalarNode {
		return &Error{Key: f.key, Msg: "must be a single value, not " + kindName(v), Source: y.at(v)}
	}
	raw := v.Value
	if isNull(v) {
		raw = ""
	}
	return y.l.setScalar(f, raw, y.at(v))
}

// listItems reads a sequence, or a scalar as a one-entry list (so a single
// secret needs no brackets). A scalar is not split on commas: only the
// environment, which has no other way to write a list, does that.
func (y yamlFile) listItems(f *field, v *yaml.Node) ([]string, error) {
	switch {
	case isNull(v) || (v.Kind == yaml.ScalarNode && v.Value == ""):
		return nil, nil
	case v.Kind == yaml.ScalarNode:
		return []string{v.Value}, nil
	case v.Kind != yaml.SequenceNode:
		return nil, &Error{Key: f.key, Msg: "must be a list, not " + kindName(v), Source: y.at(v)}
	}
	items := make([]string, 0, len(v.Content))
	for _, it := range v.Content {
		it = resolve(it)
		if it.Kind != yaml.ScalarNode {
			return nil, &Error{Key: f.key, Msg: "must be a list of single values, not hold " + kindName(it), Source: y.at(it)}
		}
		if isNull(it) {
			return nil, f.valueError("", y.at(it), errEmptyEntry)
		}
		items = append(items, it.Value)
	}
	return items, nil
}

// resolve follows an alias (*name) to the node it stands for.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return "a single value"
}

// knownKeys are every dotted key and section, for suggestions.
func knownKeys() []string {
	s := theSchema()
	keys := make([]string, 0, len(s.fields)+len(s.sections))
	for _, f := range s.fields {
		keys = append(keys, f.key)
	}
	for k := range s.sections {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
