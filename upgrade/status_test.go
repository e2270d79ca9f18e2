package upgrade

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"testing"

	"github.com/cablecar/cablecar/pubsub"
)

// TopChannels reads the hub's own membership: what joins and leaves made
// it, most subscribers first, ties by name, channels left by everyone not
// counted.
func TestTopChannels(t *testing.T) {
	h := bareHub(t, pubsub.NewMemory(), Config{})
	if err := h.broker.Start(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.broker.Close() })
	// room:i gets i+1 members; "b" and "a" one each; "gone" none once left.
	var conns []*Conn
	for i := range 5 {
		c := h.bareConn("c" + strconv.Itoa(i))
		conns = append(conns, c)
		for j := i; j < 5; j++ {
			if err := c.subscribe("room:" + strconv.Itoa(j)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := conns[0].subscribe("b", "a", "gone"); err != nil {
		t.Fatal(err)
	}
	h.leave(conns[0], []string{"gone"})

	top, total := h.TopChannels(3)
	want := []ChannelCount{{"room:4", 5}, {"room:3", 4}, {"room:2", 3}}
	if !reflect.DeepEqual(top, want) || total != 7 {
		t.Errorf("TopChannels(3) = %v, %d; want %v, 7", top, total, want)
	}
	top, total = h.TopChannels(10)
	if len(top) != 7 || top[4] != (ChannelCount{"a", 1}) || top[5] != (ChannelCount{"b", 1}) || top[6] != (ChannelCount{"room:0", 1}) || total != 7 {
		t.Errorf("TopChannels(10) = %v, %d; want all 7, the ones with one member by name", top, total)
	}
	if top, total := h.TopChannels(0); top != nil || total != 7 {
		t.Errorf("TopChannels(0) = %v, %d; want nil, 7", top, total)
	}
}

// BenchmarkTopChannels is the status page's read of 100,000 channels.
func BenchmarkTopChannels(b *testing.B) {
	h := newHub(Config{}, zeroLogger(), nil, nil)
	c := &Conn{}
	for i := range 100_000 {
		name := fmt.Sprintf("user:%d", i)
		ch := &channel{name: name, members: []*Conn{c}}
		for range i % 7 {
			ch.members = append(ch.members, c)
		}
		h.chanShard(name).chans[name] = ch
	}
	b.ReportAllocs()
	for b.Loop() {
		h.TopChannels(10)
	}
}
