package pubsub

import "testing"

// The envelope is a contract with the Ruby gem (SPEC §4): these are the
// bytes ruby/test/publisher_test.rb's test_redis_close_channel_envelope
// pins for RedisPublisher#close_channel, decoded here as a node reads them
// off a channel's companion channel.
func TestGemChannelCloseEnvelope(t *testing.T) {
	for _, tc := range []struct {
		bytes string
		want  ChannelClose
	}{
		{"C1k\x00\x00\xe8\x07remote", ChannelClose{Code: 1000, Reason: "remote"}},
		{"C1k\x02\x00\xa0\x1fbye", ChannelClose{Code: 4000, Reason: "bye", NoReconnect: true}},
	} {
		m, err := decodeMessage([]byte(tc.bytes))
		if err != nil {
			t.Fatalf("%q: %v", tc.bytes, err)
		}
		if m.Close == nil || *m.Close != tc.want || len(m.Data) != 0 {
			t.Fatalf("%q decoded as %+v (close %+v), want %+v", tc.bytes, m, m.Close, tc.want)
		}
		// And Go writes what the gem writes.
		if got := string(encodeMessage(&Message{Close: &tc.want})); got != tc.bytes {
			t.Fatalf("Go encodes %+v as %q, the gem as %q", tc.want, got, tc.bytes)
		}
	}
}
