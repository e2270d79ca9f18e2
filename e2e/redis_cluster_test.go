package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestRedisClusterHarness checks StartRedisCluster on its own, without the
// binary: every master answers, keys of every slot can be written through
// any node, and the channels the cluster tests use spread over all masters.
func TestRedisClusterHarness(t *testing.T) {
	t.Parallel()
	start := time.Now()
	rc := StartRedisCluster(t)
	t.Logf("cluster of %v ready in %s", rc.Addrs, time.Since(start).Round(time.Millisecond))
	if len(rc.Addrs) != 3 || !strings.HasPrefix(rc.URL, "redis+cluster://"+rc.Addrs[0]+"?addr=") {
		t.Fatalf("Addrs %v, URL %q", rc.Addrs, rc.URL)
	}
	owners := map[string]bool{}
	for i := range 20 {
		key := "cablecar:room:" + string(rune('a'+i))
		if v, err := rc.Do("SET", key, "v"+key); err != nil || v != "OK" {
			t.Fatalf("SET %s: %v %v", key, v, err)
		}
		if v, err := rc.Do("GET", key); err != nil || string(v.([]byte)) != "v"+key {
			t.Fatalf("GET %s: %q %v", key, v, err)
		}
		owner, err := rc.SlotOwner(key)
		if err != nil {
			t.Fatal(err)
		}
		owners[owner] = true
		if n, err := rc.SPublish(key, []byte("x")); err != nil || n != 0 {
			t.Fatalf("SPUBLISH %s with no subscribers: %d %v", key, n, err)
		}
	}
	if len(owners) != 3 {
		t.Errorf("20 keys landed on %d masters (%v), want all 3", len(owners), owners)
	}
}

// TestRedisCluster: two nodes on a Redis Cluster. Broadcasts are sharded
// (SPUBLISH) and reach subscribers on both nodes whatever master serves the
// channel's slot; /send, /close and node loss work across nodes as on one
// Redis.
func TestRedisCluster(t *testing.T) {
	t.Parallel()
	rc := StartRedisCluster(t)
	p := StartPuma(t, PumaOptions{})
	nodes := startNodes(t, p, 2, rc.URL, nil)

	// room:1 … room:20 land on every master.
	var rooms []string
	owners := map[string]int{}
	for i := 1; i <= 20; i++ {
		room := fmt.Sprintf("room:%d", i)
		rooms = append(rooms, room)
		owner, err := rc.SlotOwner(defaultPrefix + room)
		if err != nil {
			t.Fatal(err)
		}
		owners[owner]++
	}
	if len(owners) < 2 {
		t.Fatalf("the rooms' slots are all on %v; the test needs them spread", owners)
	}
	t.Logf("rooms per master: %v", owners)

	a, ida := joinWS(t, nodes[0], p, "/ws/cluster/a", rooms...)
	b, idb := joinWS(t, nodes[1], p, "/ws/cluster/b", rooms...)

	// Each node holds one shard subscription per room, on the room's
	// master.
	shard, err := rc.ShardChannels(defaultPrefix + "room:*")
	if err != nil {
		t.Fatal(err)
	}
	for _, room := range rooms {
		owner, _ := rc.SlotOwner(defaultPrefix + room)
		if got, ok := shard[defaultPrefix+room]; !ok || got != owner {
			t.Errorf("%s%s: shard channel on %q (listed: %v), want on its master %s", defaultPrefix, room, got, ok, owner)
		}
	}

	var want []string
	for _, room := range rooms {
		msg := "to " + room + " ✓"
		want = append(want, msg)
		n, err := rc.SPublish(defaultPrefix+room, []byte(msg))
		if err != nil {
			t.Fatalf("SPUBLISH %s%s: %v", defaultPrefix, room, err)
		}
		if n != 2 {
			t.Errorf("SPUBLISH %s%s: %d Redis subscribers, want 2 (one per node)", defaultPrefix, room, n)
		}
	}
	// Each room comes by its own master, so only each room's order is kept.
	expectTexts(t, a, brokerWait, want...)
	expectTexts(t, b, brokerWait, want...)

	big := utf8Payload(64<<10, 3)
	if _, err := rc.SPublish(defaultPrefix+"room:7", big); err != nil {
		t.Fatal(err)
	}
	a.Expect(brokerWait, TextMessage, big)
	b.Expect(brokerWait, TextMessage, big)

	MustAdminPost(t, nodes[0], "/publish", []map[string]any{
		{"channel": "room:3", "data": "admin 3"},
		{"channel": "room:3", "data": "admin 3 again", "except": idb},
	}, "")
	a.ExpectText(brokerWait, "admin 3")
	a.ExpectText(brokerWait, "admin 3 again")
	b.ExpectText(brokerWait, "admin 3")

	MustAdminPost(t, nodes[0], "/send", map[string]any{"connection": idb, "data": "0 to b"}, "")
	b.ExpectText(brokerWait, "0 to b")
	MustAdminPost(t, nodes[1], "/send", map[string]any{"connection": ida, "data": "1 to a"}, "")
	a.ExpectText(brokerWait, "1 to a")

	x, idx := joinWS(t, nodes[0], p, "/ws/cluster/x")
	MustAdminPost(t, nodes[1], "/close", map[string]any{"connection": idx, "code": 4002, "reason": "from node 1"}, "")
	if code, reason := x.ExpectClose(brokerWait); code != 4002 || reason != "from node 1" {
		t.Errorf("x closed with %d %q, want 4002 \"from node 1\"", code, reason)
	}
	if ev := WaitCloseEvent(t, p, idx, wsWait); ev.By != "app" {
		t.Errorf("x: close event %v, want by app", ev)
	}

	// Node 1 dies; node 0 reports its clients lost, once.
	_, idc := joinWS(t, nodes[1], p, "/ws/cluster/c", "room:5")
	killed := time.Now()
	nodes[1].Kill()
	for _, id := range []string{idb, idc} {
		l := waitCloseBatch(t, p, id, time.Until(killed.Add(nodeLostWait)))
		evs := closeEventsIn(closeBatches(l))
		if len(evs) != 1 || evs[0].By != "node_lost" {
			t.Errorf("%s: close events %v, want one by node_lost", id, evs)
		}
	}
	t.Logf("node_lost close events %s after the kill", time.Since(killed).Round(time.Millisecond))

	// Node 1's shard subscriptions went with it; node 0's stay.
	WaitFor(t, brokerWait, "room:5 to have node 0's subscription only", func() bool {
		n, err := rc.SPublish(defaultPrefix+"room:5", []byte("after the loss"))
		return err == nil && n == 1
	})
	// Every try that found a subscriber reached a.
	again := func(s string) bool { return s == "after the loss" }
	readUntil(t, a, brokerWait, "after the loss", again)
	a.Send("echo:a alive")
	readUntil(t, a, wsWait, "a alive", again)
}
