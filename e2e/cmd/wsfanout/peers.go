//go:build linux

package main

// The peers Cablecar is measured beside (issue 13, `make bench-peers`):
// anycable-go, which speaks ActionCable (its $pubsub public streams need no
// RPC backend), and Centrifugo, with its own JSON protocol. Each is driven
// the way its own clients drive it; broadcasts go through Redis where the
// server takes them from Redis (Cablecar, anycable-go), through the HTTP
// API for Centrifugo, whose Redis is a broker between its nodes, not an
// entry for the app.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/fasthttp/websocket"
	"github.com/redis/go-redis/v9"
)

// peer is -peer: "" for Cablecar.
var peer string

// publishTo is -publish: "" for Cablecar's admin API.
var publishTo string

var (
	cfData       = []byte(`"data":"t=`)
	cfSubscribed = []byte(`"id":2,"subscribe"`)
)

// setPeer checks -peer and sets what it implies: anycable-go is an
// ActionCable server, subscribed through a public stream.
func setPeer() error {
	switch peer {
	case "":
	case "anycable":
		if acIdentifier == "" {
			id, _ := json.Marshal(map[string]string{"channel": "$pubsub", "stream_name": "bench"})
			acIdentifier = string(id)
		}
		if !strings.HasPrefix(publishTo, "redis://") {
			return errors.New("-peer anycable needs -publish redis://host:port (its Redis broadcast)")
		}
	case "centrifugo":
		if !strings.HasPrefix(publishTo, "http") {
			return errors.New("-peer centrifugo needs -publish http://host:port/api (its HTTP API)")
		}
	default:
		return fmt.Errorf("-peer %q: want anycable or centrifugo", peer)
	}
	return nil
}

// centrifugoConnect sends the connect command (the server runs with
// anonymous clients allowed) and waits for its reply.
func centrifugoConnect(ws *websocket.Conn) error {
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"id":1,"connect":{}}`)); err != nil {
		return err
	}
	ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer ws.SetReadDeadline(time.Time{})
	_, data, err := ws.ReadMessage()
	if err != nil || !bytes.Contains(data, []byte(`"id":1,"connect"`)) {
		return fmt.Errorf("centrifugo connect: %q %v", data, err)
	}
	return nil
}

func centrifugoSubscribe(channel string) []byte {
	b, _ := json.Marshal(map[string]any{"id": 2, "subscribe": map[string]string{"channel": channel}})
	return b
}

// isCentrifugoPing: the server's ping is an empty object, answered with
// the same.
func isCentrifugoPing(data []byte) bool {
	return len(bytes.TrimSpace(data)) == 2 && bytes.Equal(bytes.TrimSpace(data), []byte("{}"))
}

// publisher sends one broadcast the way the server under test takes them.
type publisher struct {
	admin, channel string
	rdb            *redis.Client
	redisChannel   string
}

func newPublisher(admin, channel string) (*publisher, error) {
	p := &publisher{admin: admin, channel: channel}
	if strings.HasPrefix(publishTo, "redis://") {
		opt, err := redis.ParseURL(publishTo)
		if err != nil {
			return nil, err
		}
		p.rdb = redis.NewClient(opt)
		p.redisChannel = "cablecar:" + channel
		if peer == "anycable" {
			p.redisChannel = "__anycable__"
		}
		if err := p.rdb.Ping(context.Background()).Err(); err != nil {
			p.rdb.Close()
			return nil, fmt.Errorf("redis: %w", err)
		}
	}
	return p, nil
}

func (p *publisher) close() {
	if p.rdb != nil {
		p.rdb.Close()
	}
}

func (p *publisher) publish(client *http.Client, data string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch {
	case p.rdb != nil && peer == "anycable":
		// Its legacy Redis broadcast: data is the JSON of what the
		// clients get as "message".
		msg, _ := json.Marshal(map[string]string{"stream": p.channel, "data": mustJSON(data)})
		return p.rdb.Publish(ctx, p.redisChannel, msg).Err()
	case p.rdb != nil:
		return p.rdb.Publish(ctx, p.redisChannel, data).Err()
	case peer == "centrifugo":
		body, _ := json.Marshal(map[string]any{"channel": p.channel, "data": data})
		return post(ctx, client, publishTo+"/publish", body, http.StatusOK)
	default:
		body, _ := json.Marshal(map[string]string{"channel": p.channel, "data": data})
		return post(ctx, client, p.admin+"/publish", body, http.StatusOK)
	}
}

func mustJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func post(ctx context.Context, client *http.Client, url string, body []byte, want int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}
