package pubsub

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// How the Redis broker's clients are made: from broker.url to go-redis
// clients, one per role, each naming its connections in CLIENT LIST; and
// go-redis's own log, routed to ours.

// NewRedisClient builds a go-redis client from a broker URL: redis:// and
// rediss:// (one server), redis+sentinel:// (go-redis's failover URL, with
// master_name=), redis+cluster:// and rediss+cluster:// (go-redis's cluster
// URL: the first node in the host, more as addr=). The bool is true for a
// cluster.
func NewRedisClient(raw string) (redis.UniversalClient, bool, error) {
	opt, err := parseRedisURL(raw)
	if err != nil {
		return nil, false, err
	}
	c, cluster := newClient(opt)
	return c, cluster, nil
}

// newNamedClient builds a client from parsed options whose connections
// are named <base>:<node>:<role>, base being the URL's client_name or
// "cablecar". opt is not changed: each role gets its own copy.
func newNamedClient(opt any, node, role string) (redis.UniversalClient, bool) {
	name := func(base string) string {
		if base == "" {
			base = "cablecar"
		}
		return base + ":" + node + ":" + role
	}
	switch o := opt.(type) {
	case *redis.Options:
		c := *o
		c.ClientName = name(o.ClientName)
		return newClient(&c)
	case *redis.FailoverOptions:
		c := *o
		c.ClientName = name(o.ClientName)
		return newClient(&c)
	default:
		o2 := opt.(*redis.ClusterOptions)
		c := *o2
		c.ClientName = name(o2.ClientName)
		return newClient(&c)
	}
}

func newClient(opt any) (redis.UniversalClient, bool) {
	switch o := opt.(type) {
	case *redis.Options:
		return redis.NewClient(o), false
	case *redis.FailoverOptions:
		return redis.NewFailoverClient(o), false
	default:
		return redis.NewClusterClient(o.(*redis.ClusterOptions)), true
	}
}

// CheckRedisURL reports what is wrong with a broker URL, without
// connecting: the config check uses it, so that a URL that cannot work
// stops start-up like any other bad value.
func CheckRedisURL(raw string) error {
	_, err := parseRedisURL(raw)
	return err
}

func parseRedisURL(raw string) (any, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	scheme := strings.ToLower(u.Scheme)
	switch scheme {
	case "redis", "rediss":
		return redis.ParseURL(raw)
	case "redis+sentinel":
		u.Scheme = "redis"
		opt, err := redis.ParseFailoverURL(u.String())
		if err != nil {
			return nil, err
		}
		if opt.MasterName == "" {
			return nil, errors.New("redis+sentinel:// needs the master's name as ?master_name=")
		}
		return opt, nil
	case "redis+cluster", "rediss+cluster":
		u.Scheme = strings.TrimSuffix(scheme, "+cluster")
		return redis.ParseClusterURL(u.String())
	}
	return nil, fmt.Errorf("unknown scheme %q", u.Scheme)
}

var redisLoggerOnce sync.Once

// setRedisLogger sends go-redis's own messages (one per failed dial while
// Redis is away) to our log at debug: our warnings already say it is down.
func setRedisLogger(log zerolog.Logger) {
	redisLoggerOnce.Do(func() { redis.SetLogger(redisLogger{log.With().Str("component", "go-redis").Logger()}) })
}

type redisLogger struct{ log zerolog.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug().Msgf(format, v...)
}
