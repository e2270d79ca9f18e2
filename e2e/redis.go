package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cablecar/cablecar/internal/testsupport"
)

// Redis is a redis-server on 127.0.0.1, with no persistence, for one test.
// testsupport launches it; this adds the harness's port bookkeeping, its
// output shown when the test fails, and the raw-protocol helpers below.
type Redis struct {
	Addr string // 127.0.0.1:port
	URL  string // redis://127.0.0.1:port, the value for broker.url

	srv *testsupport.Redis
}

// StartRedis starts redis-server on a free port and waits until it answers
// PING. It is stopped when the test ends.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	requireTool(t, "redis-server")
	port := FreePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	out := &Output{}
	// Registered before the server's own cleanup, so it runs after it.
	dumpOnFailure(t, "redis-server "+addr, out)
	srv := testsupport.StartRedisWith(t, testsupport.RedisOptions{
		Port:   port,
		Output: out,
	})
	return &Redis{Addr: srv.Addr, URL: srv.URL(), srv: srv}
}

// Ping sends PING on a fresh connection and reports what went wrong, if
// anything.
func (r *Redis) Ping() error {
	conn, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Stop kills the server at once, as a crash would, and waits until it is
// gone; connections to it break.
func (r *Redis) Stop() { r.srv.Kill() }

// Restart stops the server if it runs and starts a new one on the same
// port, empty, waiting until it answers PING.
func (r *Redis) Restart() {
	r.srv.Kill()
	r.srv.Start()
}

// --- talking to Redis -------------------------------------------------------

// RedisError is an error reply from Redis ("-ERR …", "-MOVED …").
type RedisError string

func (e RedisError) Error() string { return string(e) }

// redisTimeout bounds one command on its own connection.
const redisTimeout = 5 * time.Second

// RedisDo sends one command to the server at addr on a connection of its
// own and returns the reply: string (a status), int64, []byte (a bulk
// string; nil when null), []any (an array), or an error: a RedisError for an
// error reply, another error when the server could not be reached. Arguments
// are strings or []byte, sent byte for byte. It never fails the test, so it
// may run inside WaitFor conditions and goroutines, and while the server is
// down.
func RedisDo(addr string, args ...any) (any, error) {
	var req bytes.Buffer
	fmt.Fprintf(&req, "*%d\r\n", len(args))
	for _, a := range args {
		var b []byte
		switch v := a.(type) {
		case string:
			b = []byte(v)
		case []byte:
			b = v
		default:
			return nil, fmt.Errorf("RedisDo: argument %v is %T, want string or []byte", a, a)
		}
		fmt.Fprintf(&req, "$%d\r\n", len(b))
		req.Write(b)
		req.WriteString("\r\n")
	}
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(redisTimeout))
	if _, err := conn.Write(req.Bytes()); err != nil {
		return nil, err
	}
	return readRedisReply(bufio.NewReader(conn), 0)
}

// readRedisReply reads one RESP2 reply.
func readRedisReply(br *bufio.Reader, depth int) (any, error) {
	if depth > 8 {
		return nil, errors.New("redis reply nested too deep")
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty redis reply line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, RedisError(body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 || n > 512<<20 {
			return nil, fmt.Errorf("bad bulk length %q", body)
		}
		if n == -1 {
			return []byte(nil), nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, err
		}
		return buf[:n], nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 || n > 1<<20 {
			return nil, fmt.Errorf("bad array length %q", body)
		}
		if n == -1 {
			return []any(nil), nil
		}
		out := make([]any, n)
		for i := range out {
			// An error inside an array (EXEC) is kept as a value.
			v, err := readRedisReply(br, depth+1)
			var re RedisError
			if errors.As(err, &re) {
				v, err = re, nil
			}
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown redis reply %q", line)
}

// redisStrings turns an array reply of bulk strings into strings.
func redisStrings(v any, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("reply %v is not an array", v)
	}
	out := make([]string, 0, len(arr))
	for _, e := range arr {
		b, ok := e.([]byte)
		if !ok {
			return nil, fmt.Errorf("array element %v is not a bulk string", e)
		}
		out = append(out, string(b))
	}
	return out, nil
}

// redisInt is an integer reply.
func redisInt(v any, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	n, ok := v.(int64)
	if !ok {
		return 0, fmt.Errorf("reply %v is not an integer", v)
	}
	return n, nil
}

// Do sends one command to the server (see RedisDo).
func (r *Redis) Do(args ...any) (any, error) { return RedisDo(r.Addr, args...) }

// Publish is PUBLISH channel payload, the channel taken as is (with any
// prefix already on it); it returns how many subscribers got it.
func (r *Redis) Publish(channel string, payload []byte) (int64, error) {
	return redisInt(r.Do("PUBLISH", channel, payload))
}

// Channels is PUBSUB CHANNELS pattern: the channels someone is subscribed
// to.
func (r *Redis) Channels(pattern string) ([]string, error) {
	return redisStrings(r.Do("PUBSUB", "CHANNELS", pattern))
}

// NumSub is PUBSUB NUMSUB channel: how many connections are subscribed to
// it.
func (r *Redis) NumSub(channel string) (int64, error) {
	v, err := r.Do("PUBSUB", "NUMSUB", channel)
	if err != nil {
		return 0, err
	}
	arr, ok := v.([]any)
	if !ok || len(arr) != 2 {
		return 0, fmt.Errorf("PUBSUB NUMSUB answered %v", v)
	}
	return redisInt(arr[1], nil)
}
