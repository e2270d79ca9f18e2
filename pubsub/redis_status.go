package pubsub

import "time"

// DownSince is when this node lost its subscriber connection to Redis, or
// the zero time while it is up (and before it first came up: failing to
// connect at start-up is not an outage). The status page shows how long
// the current outage has lasted; cablecar_broker_outage_seconds_total only
// counts an outage once it is over.
func (r *Redis) DownSince() time.Time {
	if since := r.downSince.Load(); since != 0 && !r.connected.Load() {
		return time.Unix(0, since)
	}
	return time.Time{}
}
