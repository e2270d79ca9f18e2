// Command wsload holds many idle WebSocket connections open against one
// server, answering its pings, so that the server's cost per connection can
// be measured with the clients in a process of their own.
//
//	wsload -url ws://127.0.0.1:3000/ws/chat?subscribe=bench -n 10000
//
// It dials -n connections (-c at a time), spreading their source addresses
// over 127.0.0.1 … 127.0.0.<-sources> so that no address pair runs out of
// ports, then prints one JSON line ({"event":"connected",…}) and holds them
// until its standard input is closed (or -hold passes). Then it closes them
// and prints a last JSON line with what it saw and its own CPU time
// ({"event":"done",…}). Every line is one JSON object on stdout; errors go
// to stderr.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fasthttp/websocket"
)

func main() {
	var (
		url     = flag.String("url", "", "WebSocket URL; {j} is replaced by the connection's number")
		n       = flag.Int("n", 1000, "connections")
		c       = flag.Int("c", 32, "dials in flight")
		sources = flag.Int("sources", 16, "source addresses 127.0.0.1 … 127.0.0.N")
		hold    = flag.Duration("hold", 0, "hold this long, then stop (0 = until stdin closes)")
		retries = flag.Int("retries", 2, "retries of a refused handshake")
	)
	flag.Parse()
	if *url == "" || *n < 1 || *c < 1 || *sources < 1 || *sources > 254 {
		flag.Usage()
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)

	var (
		pings, messages, closed, retried atomic.Int64
		readers                          sync.WaitGroup
	)
	dialers := make([]websocket.Dialer, *sources)
	for i := range dialers {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(i+1))}}
		dialers[i] = websocket.Dialer{
			HandshakeTimeout: 30 * time.Second,
			NetDialContext:   d.DialContext,
			// Small buffers: the clients' memory is not what is measured,
			// but 19,000 of them must fit beside the server.
			ReadBufferSize:  256,
			WriteBufferSize: 256,
		}
	}
	conns := make([]*websocket.Conn, *n)
	start := time.Now()
	sem := make(chan struct{}, *c)
	var dials sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	for j := range conns {
		dials.Add(1)
		sem <- struct{}{}
		go func() {
			defer dials.Done()
			defer func() { <-sem }()
			u := strings.ReplaceAll(*url, "{j}", strconv.Itoa(j))
			var ws *websocket.Conn
			var err error
			for try := 0; ; try++ {
				ws, _, err = dialers[j%len(dialers)].Dial(u, http.Header{})
				if err == nil || try >= *retries {
					break
				}
				retried.Add(1)
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			ws.SetPingHandler(func(data string) error {
				pings.Add(1)
				// A failed pong shows as the server closing the connection.
				_ = ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(10*time.Second))
				return nil
			})
			conns[j] = ws
			readers.Add(1)
			go func() {
				defer readers.Done()
				for {
					if _, _, err := ws.ReadMessage(); err != nil {
						closed.Add(1)
						return
					}
					messages.Add(1)
				}
			}()
		}()
	}
	dials.Wait()
	ev := map[string]any{"event": "connected", "n": *n - int(failed.Load()), "failed": failed.Load(),
		"retried": retried.Load(), "seconds": time.Since(start).Seconds()}
	if e := firstErr.Load(); e != nil {
		ev["first_error"] = e
	}
	out.Encode(ev)

	ctx := context.Background()
	if *hold > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *hold)
		defer cancel()
	}
	stdin := make(chan struct{})
	go func() {
		io.Copy(io.Discard, bufio.NewReader(os.Stdin))
		close(stdin)
	}()
	select {
	case <-stdin:
	case <-ctx.Done():
	}

	closedBefore := closed.Load()
	for _, ws := range conns {
		if ws != nil {
			ws.Close()
		}
	}
	readers.Wait()
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	out.Encode(map[string]any{
		"event":              "done",
		"pings":              pings.Load(),
		"messages":           messages.Load(),
		"closed_by_server":   closedBefore,
		"cpu_user_seconds":   tv(ru.Utime),
		"cpu_system_seconds": tv(ru.Stime),
		"max_rss_kib":        ru.Maxrss,
	})
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
