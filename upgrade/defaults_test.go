package upgrade

import (
	"testing"

	"github.com/cablecar/cablecar/config"
)

// websocket.send_queue_bytes has its default in config's tags (the
// source, which the sidecar always passes) and here for a zero Config;
// they must not drift.
func TestDefaultsMatchConfig(t *testing.T) {
	var c Config
	c.setDefaults()
	if want := config.Default().WebSocket.SendQueueBytes; c.SendQueueBytes != want {
		t.Errorf("websocket.send_queue_bytes: the zero Config means %d, config's default is %d", c.SendQueueBytes, want)
	}
}
