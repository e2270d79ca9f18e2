package actioncable

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// Signed with ActiveSupport 6.1's
// MessageVerifier.new("turbo-key-for-tests", digest: "SHA256", serializer: JSON).generate(name),
// which is how turbo-rails signs (Turbo.signed_stream_verifier).
const fixedKey = "turbo-key-for-tests"

var fixedVectors = []struct {
	signed string
	name   string // "" when what was signed is not a string
}{
	{"IloybGtPaTh2WVhCd0wxSnZiMjB2TVE6bWVzc2FnZXMi--d61084308e5ae084f91e7f34bad41ad37fad47e34a1ca09c2c7fb8b7261defcd",
		"Z2lkOi8vYXBwL1Jvb20vMQ:messages"},
	{"InJvb20i--85184e626c2b68ba2ae59ba333686b5118b72d6d461f6befbbce4192e9fdd9e3", "room"},
	{"ImNhZsOpOlwicXVvdGVkXCJcXCI=--a856204fe987d8f55306d6bc0caf08bdf4bd0d3d96effe54c28c796e305145d0",
		`café:"quoted"\`},
	{"NDI=--3f8a9977f2db2f4f039bb18bca44ef15b693513a0574b50bd834840f875b6777", ""},         // 42
	{"WyJhIiwiYiJd--1e317efcd3955ad09697b0326c49ae5e0d306dbf0f6db923b1fd7b3952c1b6c0", ""}, // ["a","b"]
	{"eyJ4IjoxfQ==--3bdec6071074005f7a0d4968583ae1819b9c15bbb156640f26d88e5b00d6b639", ""}, // {"x":1}
}

func TestStreamVerifierFixedVectors(t *testing.T) {
	v := NewStreamVerifier(fixedKey)
	for _, vec := range fixedVectors {
		name, err := v.Verify(vec.signed)
		switch {
		case vec.name == "" && (err == nil || errors.Is(err, ErrBadSignature)):
			t.Errorf("Verify(%s) = %q, %v; want a not-a-string error", vec.signed, name, err)
		case vec.name != "" && (err != nil || name != vec.name):
			t.Errorf("Verify(%s) = %q, %v; want %q", vec.signed, name, err, vec.name)
		}
		if vec.name != "" && v.Sign(vec.name) != vec.signed {
			t.Errorf("Sign(%q) = %s, want %s", vec.name, v.Sign(vec.name), vec.signed)
		}
	}
}

// Anything not signed with the key, however close, is refused.
func TestStreamVerifierTampered(t *testing.T) {
	v := NewStreamVerifier(fixedKey)
	good := fixedVectors[0].signed
	data, digest, _ := strings.Cut(good, "--")
	otherData := base64.StdEncoding.EncodeToString([]byte(`"Z2lkOi8vYXBwL1Jvb20vMg:messages"`))
	flip := func(s string, i int) string {
		b := []byte(s)
		b[i] ^= 1
		return string(b)
	}
	for name, signed := range map[string]string{
		"other key":          NewStreamVerifier(fixedKey + "x").Sign(fixedVectors[0].name),
		"other name":         otherData + "--" + digest,
		"data bit flipped":   flip(data, 3) + "--" + digest,
		"digest bit flipped": data + "--" + flip(digest, 10),
		"digest upper case":  data + "--" + strings.ToUpper(digest),
		"digest cut":         data + "--" + digest[:63],
		"digest longer":      data + "--" + digest + "0",
		"no separator":       data + digest,
		"one dash":           data + "-" + digest,
		"digest only":        "--" + digest,
		"data only":          data + "--",
		"empty":              "",
		"unsigned name":      "Z2lkOi8vYXBwL1Jvb20vMQ:messages",
		"line break added":   data[:4] + "\n" + data[4:] + "--" + digest,
	} {
		if got, err := v.Verify(signed); err == nil {
			t.Errorf("%s: Verify(%q) = %q, want an error", name, signed, got)
		}
	}
}

// Rails 7.1+ also verifies URL-safe Base64 data (MessageVerifier#decode
// falls back to it); a name signed so verifies here too.
func TestStreamVerifierURLSafeData(t *testing.T) {
	v := NewStreamVerifier(fixedKey)
	name := "room?~>" // Base64 of its JSON has + and /, which URL-safe Base64 writes - and _
	js := appendRubyJSON(nil, name)
	if std := base64.StdEncoding.EncodeToString(js); !strings.ContainsAny(std, "+/") {
		t.Fatalf("%s: pick a name whose Base64 has + or /", std)
	}
	for _, data := range []string{base64.RawURLEncoding.EncodeToString(js), base64.URLEncoding.EncodeToString(js)} {
		var digest [64]byte
		v.digest(&digest, data)
		if got, err := v.Verify(data + "--" + string(digest[:])); err != nil || got != name {
			t.Errorf("URL-safe %s: %q, %v", data, got, err)
		}
	}
}

// Against Ruby's ActiveSupport itself, when it is installed (make deps
// installs it with ruby-railties): Sign gives what turbo-rails gives, and
// Verify reads it back.
func TestStreamVerifierAgainstActiveSupport(t *testing.T) {
	if _, err := exec.LookPath("ruby"); err != nil {
		t.Skip("no ruby: run make deps")
	}
	names := []string{"room", "Z2lkOi8vYXBwL1Jvb20vMQ:messages", `quote " and \ backslash`, "é日本🙂", "a\u2028b",
		"<html> & /slash/", "controls \x00\x01\x1f\b\f\n\r\t\x7f",
		strings.Repeat("long:", 100), "gid://app/Room/1:comments"}
	keys := []string{"k", "a longer key with spaces and ünïcode", strings.Repeat("x", 200)}
	in, _ := json.Marshal(map[string]any{"names": names, "keys": keys})
	cmd := exec.Command("ruby", "-e", `
		require "json"
		require "active_support"
		require "active_support/message_verifier"
		req = JSON.parse($stdin.read)
		out = req["keys"].map do |k|
		  v = ActiveSupport::MessageVerifier.new(k, digest: "SHA256", serializer: JSON)
		  req["names"].map { |n| v.generate(n) }
		end
		puts JSON.generate(out)`)
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && strings.Contains(string(ee.Stderr), "LoadError") {
			t.Skipf("ActiveSupport is not installed (run make deps): %s", ee.Stderr)
		}
		t.Fatalf("ruby: %v", err)
	}
	var signed [][]string
	if err := json.Unmarshal(out, &signed); err != nil {
		t.Fatalf("ruby said %s: %v", out, err)
	}
	for i, k := range keys {
		v := NewStreamVerifier(k)
		for j, n := range names {
			s := signed[i][j]
			if got := v.Sign(n); got != s {
				t.Errorf("key %d, %q: Sign = %s, ActiveSupport %s", i, n, got, s)
			}
			if got, err := v.Verify(s); err != nil || got != n {
				t.Errorf("key %d: Verify(%s) = %q, %v; want %q", i, s, got, err, n)
			}
			if _, err := NewStreamVerifier(k + "!").Verify(s); !errors.Is(err, ErrBadSignature) {
				t.Errorf("key %d, %q verified with another key: %v", i, n, err)
			}
		}
	}
}

func TestFastLane(t *testing.T) {
	v := NewStreamVerifier(fixedKey)
	signed := fixedVectors[0].signed
	stream := fixedVectors[0].name
	turbo := func(extra string) string {
		return `{"channel":"Turbo::StreamsChannel","signed_stream_name":"` + signed + `"` + extra + `}`
	}
	pubsubSigned := `{"channel":"$pubsub","signed_stream_name":"` + signed + `"}`
	public := `{"channel":"$pubsub","stream_name":"chat_42"}`
	badSig := `{"channel":"Turbo::StreamsChannel","signed_stream_name":"` + v.Sign("x")[:20] + `--` + strings.Repeat("0", 64) + `"}`
	spaced := `{"channel":"Turbo::StreamsChannel","signed_stream_name":"` + v.Sign("my room") + `"}`
	notString := `{"channel":"Turbo::StreamsChannel","signed_stream_name":"` + fixedVectors[4].signed + `"}`

	on := NewFastLane(fixedKey, true)
	signedOnly := NewFastLane(fixedKey, false)
	publicOnly := NewFastLane("", true)
	off := NewFastLane("", false)
	tests := []struct {
		name       string
		lane       *FastLane
		identifier string
		want       Lane
		stream     string
	}{
		{"turbo", signedOnly, turbo(""), Confirm, stream},
		{"turbo with params turbo_stream_from adds", signedOnly, turbo(`,"target":"x"`), Confirm, stream},
		{"turbo, keys in another order", signedOnly,
			`{"signed_stream_name":"` + signed + `","channel":"Turbo::StreamsChannel"}`, Confirm, stream},
		{"turbo, tampered", signedOnly, badSig, Reject, ""},
		{"turbo, another key", NewFastLane("other", false), turbo(""), Reject, ""},
		{"turbo, no signed name", signedOnly, `{"channel":"Turbo::StreamsChannel"}`, Reject, ""},
		{"turbo, signed name not a string", signedOnly, `{"channel":"Turbo::StreamsChannel","signed_stream_name":1}`, Reject, ""},
		{"turbo, signed value not a string", signedOnly, notString, Reject, ""},
		{"turbo, name Cablecar cannot stream from", signedOnly, spaced, Reject, ""},
		{"turbo, no secret: the app's", publicOnly, turbo(""), ToApp, ""},
		{"turbo, lane off", off, turbo(""), ToApp, ""},
		{"$pubsub signed", signedOnly, pubsubSigned, Confirm, stream},
		{"$pubsub signed, no secret", publicOnly, pubsubSigned, ToApp, ""},
		{"$pubsub public, on", on, public, Confirm, "chat_42"},
		{"$pubsub public, off", signedOnly, public, ToApp, ""},
		{"$pubsub public, bad name", publicOnly, `{"channel":"$pubsub","stream_name":"a b"}`, Reject, ""},
		{"$pubsub public, name not a string", publicOnly, `{"channel":"$pubsub","stream_name":7}`, ToApp, ""},
		{"$pubsub, nothing", on, `{"channel":"$pubsub"}`, ToApp, ""},
		{"another channel", on, `{"channel":"ChatChannel","signed_stream_name":"` + signed + `"}`, ToApp, ""},
		{"channel in another case", on, `{"channel":"turbo::streamschannel","signed_stream_name":"` + signed + `"}`, ToApp, ""},
		{"key in another case", on, `{"Channel":"Turbo::StreamsChannel","signed_stream_name":"` + signed + `"}`, ToApp, ""},
		{"not JSON", on, `Turbo::StreamsChannel`, ToApp, ""},
		{"JSON, not an object", on, `["Turbo::StreamsChannel"]`, ToApp, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.lane.Decide(tt.identifier)
			if got.Lane != tt.want || got.Stream != tt.stream {
				t.Errorf("Decide(%s) = %+v; want lane %d, stream %q", tt.identifier, got, tt.want, tt.stream)
			}
			if (got.Lane == Reject) != (got.Err != nil) {
				t.Errorf("Decide(%s): lane %d with error %v", tt.identifier, got.Lane, got.Err)
			}
			if got.Err != nil && strings.Contains(got.Err.Error(), fixedKey) {
				t.Errorf("the reason shows the secret: %v", got.Err)
			}
		})
	}
}

func BenchmarkFastLaneTurbo(b *testing.B) {
	l := NewFastLane(fixedKey, false)
	id := `{"channel":"Turbo::StreamsChannel","signed_stream_name":"` + fixedVectors[0].signed + `"}`
	b.ReportAllocs()
	for b.Loop() {
		if v := l.Decide(id); v.Lane != Confirm {
			b.Fatal(v)
		}
	}
}
