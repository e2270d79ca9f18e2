package config

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// These tests keep sidecar.yaml and docs/configuration.md from drifting
// away from the struct tags, which are the only table of defaults.

const (
	sidecarPath = "../sidecar.yaml"
	docPath     = "../docs/configuration.md"
)

func TestSidecarYAMLIsTheDefaults(t *testing.T) {
	c, _, err := Parse([]string{"-config", sidecarPath}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("sidecar.yaml differs from Default():\n got %+v\nwant %+v", c, Default())
	}
}

func TestSidecarYAMLHasEveryKey(t *testing.T) {
	b, err := os.ReadFile(sidecarPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	present := map[string]bool{}
	collectKeys(doc.Content[0], "", present)
	for _, f := range theSchema().fields {
		if !present[f.key] {
			t.Errorf("sidecar.yaml lacks %s", f.key)
		}
	}
}

// collectKeys records the dotted key of every leaf under n.
func collectKeys(n *yaml.Node, prefix string, into map[string]bool) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, v := prefix+n.Content[i].Value, n.Content[i+1]
		if v.Kind == yaml.MappingNode {
			collectKeys(v, key+".", into)
			continue
		}
		into[key] = true
	}
}

// Every key, with its variable and default, is in the doc's table.
func TestDocHasEveryKey(t *testing.T) {
	b, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{} // key → its table row
	for _, line := range strings.Split(string(b), "\n") {
		if cells := strings.Split(line, "|"); len(cells) > 4 && strings.HasPrefix(line, "| `") {
			rows[strings.Trim(strings.TrimSpace(cells[1]), "`")] = line
		}
	}
	for _, f := range theSchema().fields {
		row, ok := rows[f.key]
		if !ok {
			t.Errorf("%s: no row in the key table of %s", f.key, docPath)
			continue
		}
		if !strings.Contains(row, "`"+f.env+"`") {
			t.Errorf("%s: row does not name %s: %s", f.key, f.env, row)
		}
		if def := docDefault(f); !strings.Contains(row, def) {
			t.Errorf("%s: row does not give the default %s: %s", f.key, def, row)
		}
	}
	for key := range rows {
		if theSchema().byKey[key] == nil {
			t.Errorf("%s documents %s, which is not a key", docPath, key)
		}
	}
}

// docDefault is how the doc's table writes a key's default: as it would
// appear in sidecar.yaml, in code font.
func docDefault(f *field) string {
	v := f.format(f.in(Default()))
	switch {
	case f.isList():
		return "`[" + strings.Join(v, ", ") + "]`"
	case v[0] == "":
		return "`\"\"`"
	}
	return "`" + v[0] + "`"
}
