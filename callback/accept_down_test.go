package callback

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
)

// Right after the app died, the pool still holds keep-alive connections to
// it, and each fails only when used. A handshake then must learn that the
// app is unreachable (503, SPEC §2), not that its answer was broken (502):
// the one retry of a stale connection may well land on another stale one.
func TestAcceptRightAfterTheAppDiedIsUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	gate := make(chan struct{})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go func() {
				br := bufio.NewReader(c)
				for {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					<-gate // answered together, so each request had its own connection
					if _, err := io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	c := newTestClient(t, "tcp", ln.Addr().String(), nil)

	// Three handshakes at once leave three pooled connections.
	const warm = 3
	var wg sync.WaitGroup
	for i := 0; i < warm; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := acceptRequest("/ws", "")
			if err := c.Accept(req, resp); err != nil {
				t.Errorf("warming accept: %v", err)
			}
		}()
	}
	eventually(t, "three connections to the app", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(conns) == warm
	})
	close(gate)
	wg.Wait()

	// The app dies: its listener and every connection go.
	ln.Close()
	mu.Lock()
	for _, conn := range conns {
		conn.Close()
	}
	mu.Unlock()

	for i := 0; i < warm; i++ {
		req, resp := acceptRequest("/ws", "")
		if err := c.Accept(req, resp); !errors.Is(err, ErrUnreachable) {
			t.Fatalf("accept %d after the app died: %v, want ErrUnreachable", i+1, err)
		}
	}
}
