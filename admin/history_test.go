package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/cablecar/cablecar/pubsub"
)

type nopSink struct{}

func (nopSink) Deliver(pubsub.Message)      {}
func (nopSink) Execute(pubsub.Command) bool { return false }

// With history on, /publish answers each message's position, in request
// order, null where the channel keeps none (SPEC §4, §10).
func TestPublishPositions(t *testing.T) {
	b := pubsub.NewMemory().WithHistory(pubsub.HistoryConfig{Size: 10, TTL: time.Minute, Channels: []string{"room:*"}})
	if err := b.Start(context.Background(), nopSink{}); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	s := New(zerolog.Nop(), prometheus.NewRegistry())
	s.EnableAPI(b, "")
	code, body := post(s, "/publish", `[{"channel":"room:1","data":"a"},{"channel":"lobby","data":"b"},{"channel":"room:1","data":"c"}]`, "")
	if code != http.StatusOK {
		t.Fatalf("/publish: %d %s", code, body)
	}
	var got struct {
		Published int       `json:"published"`
		Positions []*string `json:"positions"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	pos := regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}:(\d+)$`)
	if got.Published != 3 || len(got.Positions) != 3 || got.Positions[1] != nil ||
		got.Positions[0] == nil || got.Positions[2] == nil ||
		pos.FindStringSubmatch(*got.Positions[0]) == nil || pos.FindStringSubmatch(*got.Positions[0])[1] != "1" ||
		pos.FindStringSubmatch(*got.Positions[2]) == nil || pos.FindStringSubmatch(*got.Positions[2])[1] != "2" {
		t.Errorf("/publish answered %s; want 3 published at <epoch>:1, null, <epoch>:2", body)
	}
}
