package config

import (
	"sort"
	"strings"
)

// envMap indexes environ; like os.Getenv, the first of duplicates wins.
func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if _, dup := m[k]; ok && !dup {
			m[k] = v
		}
	}
	return m
}

// loadEnv applies the CABLECAR_* variables that name keys.
func (l *loader) loadEnv(env map[string]string) error {
	s := theSchema()
	for _, f := range s.fields {
		raw, ok := env[f.env]
		if !ok {
			continue
		}
		var err error
		if f.isList() {
			err = l.setList(f, splitList(raw), f.env)
		} else {
			err = l.setScalar(f, raw, f.env)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// gemEnv are the variables the Ruby gem documents as its own (ruby/README.md,
// Cablecar.configure): a container that shares the app's environment has
// them set on purpose, so they are not warned about (SPEC §7).
var gemEnv = map[string]bool{"CABLECAR_ADMIN_URL": true}

// unknownEnv lists the CABLECAR_* variables that name no key, as
// warnings: the app's container often shares the environment and may use
// the prefix for its own settings, so they must not stop start-up.
func unknownEnv(env map[string]string) []string {
	s := theSchema()
	known := make([]string, 0, len(s.fields))
	for _, f := range s.fields {
		known = append(known, strings.TrimPrefix(f.env, envPrefix))
	}
	var warnings []string
	for name := range env {
		rest, ok := strings.CutPrefix(name, envPrefix)
		if !ok || s.byEnv[name] != nil || name == configEnv || gemEnv[name] {
			continue
		}
		hints := suggest(rest, rest, known, "_")
		for i := range hints {
			hints[i] = envPrefix + hints[i]
		}
		warnings = append(warnings, name+": unknown variable, ignored"+didYouMean(hints))
	}
	sort.Strings(warnings)
	return warnings
}
