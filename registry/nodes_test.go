package registry

import (
	"reflect"
	"testing"
	"time"

	"github.com/cablecar/cablecar/internal/testsupport"
)

// Nodes lists every node Redis knows of with its lease and its records: a
// live node as alive, a node whose lease is gone as not, its records still
// counted until a survivor has posted their close events.
func TestRegistryNodes(t *testing.T) {
	srv := testsupport.StartRedis(t)
	rdb := srv.Client(t)
	a := newTestRegistry(t, rdb, "nodeAAAA")
	b := newTestRegistry(t, rdb, "nodeBBBB")
	ctx := t.Context()
	if got, err := b.Nodes(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Nodes before any node ran = %v, %v; want none", got, err)
	}
	// Neither reaps: the lost node's records stay for the last check.
	killA := runNoReaping(t, a)
	runNoReaping(t, b)
	trackN(a, 3)
	b.Track(testRecord(b.node, 0))

	want := []NodeInfo{{ID: "nodeAAAA", Alive: true, Connections: 3}, {ID: "nodeBBBB", Alive: true, Connections: 1}}
	var got []NodeInfo
	eventually(t, "both nodes with their records", 5*time.Second, func() bool {
		var err error
		got, err = b.Nodes(ctx)
		return err == nil && reflect.DeepEqual(got, want)
	})

	killA()
	if err := rdb.Del(ctx, keysOf("cc:", a.node).lease).Err(); err != nil {
		t.Fatal(err)
	}
	want[0].Alive = false
	if got, err := b.Nodes(ctx); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Nodes with A's lease gone = %+v, %v; want %+v", got, err, want)
	}

	srv.Kill()
	if _, err := b.Nodes(ctx); err == nil {
		t.Error("Nodes with Redis gone: no error")
	}
}
