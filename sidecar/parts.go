package sidecar

import (
	"fmt"

	"github.com/cablecar/cablecar/auth"
	"github.com/cablecar/cablecar/callback"
	"github.com/cablecar/cablecar/config"
	"github.com/cablecar/cablecar/presence"
	"github.com/cablecar/cablecar/proxy"
	"github.com/cablecar/cablecar/pubsub"
	"github.com/cablecar/cablecar/registry"
	"github.com/cablecar/cablecar/upgrade"
)

// parts is what each part is told by the config. New builds the parts
// from it, adding what is not config (the node id, the JWT verifier, the
// registry as the connections' tracker). Every config key reaches a part
// through here, or is listed where New or Run uses it (parts_test.go
// fails otherwise): a key that is validated and documented but wired to
// nothing silently does nothing.
type parts struct {
	proxy    proxy.Config
	callback callback.Config
	upgrade  upgrade.Config
	jwt      auth.JWTConfig
	// redis and registry are used only when broker.url is set, but
	// redis.History, which the memory broker is given too.
	redis    pubsub.RedisConfig
	registry registry.Config
	// presence is the presence section; presenceRedis its Redis store's.
	presence      presenceConfig
	presenceRedis presence.RedisConfig
}

func partConfigs(cfg *config.Config, node string) (parts, error) {
	origins, err := auth.NewOriginPolicy(cfg.WebSocket.AllowedOrigins)
	if err != nil {
		return parts{}, fmt.Errorf("websocket.allowed_origins: %w", err)
	}
	ucfg := upgradeConfig(cfg, origins)
	ucfg.Node = node
	return parts{
		proxy:    proxyConfig(cfg),
		callback: callbackConfig(cfg),
		upgrade:  ucfg,
		jwt:      jwtConfig(cfg),
		// History (SPEC §10) is the broker's, whichever it is: the memory
		// broker takes it from here too.
		redis: pubsub.RedisConfig{URL: cfg.Broker.URL, Prefix: cfg.Broker.Prefix, Node: node,
			History: pubsub.HistoryConfig{Size: cfg.History.Size, TTL: cfg.History.TTL, Channels: cfg.History.Channels}},
		registry:      registry.Config{Prefix: cfg.Broker.Prefix, Node: node, LeaseTTL: cfg.Broker.LeaseTTL},
		presence:      presenceSection(cfg),
		presenceRedis: presence.RedisConfig{Prefix: cfg.Broker.Prefix, Node: node, LeaseTTL: cfg.Broker.LeaseTTL, LeaveDelay: cfg.Presence.LeaveDelay},
	}, nil
}

func proxyConfig(cfg *config.Config) proxy.Config {
	return proxy.Config{
		Network:           cfg.Upstream.Network,
		Address:           cfg.Upstream.Address,
		ConnectTimeout:    cfg.Proxy.ConnectTimeout,
		ResponseTimeout:   cfg.Proxy.ResponseTimeout,
		IdleTimeout:       cfg.Proxy.IdleTimeout,
		ClientIdleTimeout: cfg.Proxy.ClientIdleTimeout,
		MaxConns:          cfg.Proxy.MaxConns,
		TrustedProxies:    cfg.Proxy.TrustedProxies,
		HealthPath:        cfg.Proxy.HealthPath,
		ClientBodyTimeout: cfg.Proxy.ClientBodyTimeout,
		MaxConnsPerClient: cfg.Proxy.ConnsPerClient(),
		// sid: an ActionCable ext session's secret (SPEC §10).
		SensitiveParams: []string{cfg.Auth.JWT.QueryParam, "sid"},
	}
}

func callbackConfig(cfg *config.Config) callback.Config {
	return callback.Config{
		Network:        cfg.Upstream.Network,
		Address:        cfg.Upstream.Address,
		ConnectTimeout: cfg.Proxy.ConnectTimeout,
		Timeout:        cfg.Callback.Timeout,
		Retries:        cfg.Callback.Retries,
		Secrets:        cfg.Callback.Secret,
		MaxInFlight:    cfg.Callback.MaxInFlight,
		// Close events outlive app outages (SPEC §3).
		CloseRetryFor:    cfg.Callback.CloseRetryFor,
		MaxPendingCloses: cfg.Callback.MaxPendingCloses,
	}
}

func jwtConfig(cfg *config.Config) auth.JWTConfig {
	j := cfg.Auth.JWT
	return auth.JWTConfig{
		Required:    j.Required,
		HMACSecrets: j.HMACSecret,
		JWKSURL:     j.JWKSURL,
		Issuer:      j.Issuer,
		Audience:    j.Audience,
		QueryParam:  j.QueryParam,
		Leeway:      j.Leeway,
	}
}

func upgradeConfig(cfg *config.Config, origins *auth.OriginPolicy) upgrade.Config {
	ws := cfg.WebSocket
	return upgrade.Config{
		PingInterval:   ws.PingInterval,
		PongTimeout:    ws.PongTimeout,
		SendQueue:      ws.SendQueue,
		SendQueueBytes: ws.SendQueueBytes,
		MaxMessageSize: ws.MaxMessageSize,
		RatePerSecond:  ws.RateLimit.PerSecond,
		RateBurst:      ws.RateLimit.Burst,
		Origins:        origins,
		ForwardHeaders: cfg.Callback.ForwardHeaders,
		// The token's exp is checked after the handshake too.
		JWTLeeway:     cfg.Auth.JWT.Leeway,
		ShutdownGrace: ws.ShutdownGrace,
		ActionCable: upgrade.ActionCableConfig{
			PingInterval:       cfg.ActionCable.PingInterval,
			TurboStreamsSecret: cfg.ActionCable.TurboStreamsSecret,
			PublicStreams:      cfg.ActionCable.PublicStreams,
			// The store itself is built in New (it needs the broker's client).
			SessionTTL: cfg.ActionCable.SessionTTL,
		},
	}
}
