// Command device plays the devices of the presence example (seed 001's
// device dashboard): each keeps a WebSocket to Cablecar open as a phone or
// a sensor would, answering Cablecar's pings, and can be put in "airplane
// mode" — the radio goes quiet, nothing in or out, but the socket is not
// closed, as when a phone loses its network — and brought back.
//
//	device [-url ws://localhost:3000] [-control 127.0.0.1:7000] thermostat doorbell camera
//
// Commands, one a line on stdin, or as POST /<command>?id=<device> on the
// -control address (GET /status answers every device's state as JSON):
//
//	off ID    airplane mode: stop answering, keep the socket
//	on ID     back: answer again; reconnect if Cablecar gave the socket up
//	swap ID   the seed's race: the socket goes silent for good and a new one
//	          opens at once, before Cablecar has found the old one dead
//	status    every device's state
//	quit      close every socket and exit
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fasthttp/websocket"
)

func main() {
	base := flag.String("url", "ws://localhost:3000", "Cablecar's address; each device dials <url>/device?id=<id>")
	control := flag.String("control", "", "host:port to take commands over HTTP on (tests use it); empty: stdin only")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: device [-url ws://localhost:3000] [-control host:port] id...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fleet := map[string]*device{}
	for _, id := range flag.Args() {
		d := &device{id: id, url: strings.TrimSuffix(*base, "/") + "/device?id=" + url.QueryEscape(id), ctx: ctx}
		fleet[id] = d
		go d.connect()
	}
	if *control != "" {
		ln, err := net.Listen("tcp", *control)
		if err != nil {
			log.Fatalf("control: %v", err)
		}
		// The address chosen, for a caller that asked for port 0.
		fmt.Printf("control on http://%s\n", ln.Addr())
		srv := &http.Server{Handler: controlHandler(fleet), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
	}
	go readCommands(fleet, stop)
	<-ctx.Done()
	for _, d := range fleet {
		d.closeAll()
	}
}

// readCommands takes commands from stdin until quit; at the end of stdin
// (run in the background) the devices keep going.
func readCommands(fleet map[string]*device, quit func()) {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		switch {
		case len(f) == 0:
		case f[0] == "quit":
			quit()
			return
		case f[0] == "status":
			b, _ := json.MarshalIndent(status(fleet), "", "  ")
			fmt.Println(string(b))
		case len(f) == 2:
			if err := command(fleet, f[0], f[1]); err != nil {
				fmt.Println(err)
			}
		default:
			fmt.Println("commands: off ID, on ID, swap ID, status, quit")
		}
	}
}

func command(fleet map[string]*device, cmd, id string) error {
	d := fleet[id]
	if d == nil {
		return fmt.Errorf("no device %q", id)
	}
	switch cmd {
	case "off":
		d.airplane(true)
	case "on":
		d.airplane(false)
	case "swap":
		d.swap()
	default:
		return fmt.Errorf("unknown command %q: off, on or swap", cmd)
	}
	return nil
}

func controlHandler(fleet map[string]*device) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(status(fleet))
	})
	mux.HandleFunc("POST /{cmd}", func(w http.ResponseWriter, r *http.Request) {
		if err := command(fleet, r.PathValue("cmd"), r.URL.Query().Get("id")); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

type deviceStatus struct {
	ID       string `json:"id"`
	State    string `json:"state"`    // online, airplane, connecting
	Connects int    `json:"connects"` // successful dials so far
	Silent   int    `json:"silent"`   // sockets given up by a swap, still open on this side
}

func status(fleet map[string]*device) []deviceStatus {
	var out []deviceStatus
	for _, d := range fleet {
		out = append(out, d.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// device is one simulated device: at most one live socket (cur) and the
// silent ones a swap left behind.
type device struct {
	id, url string
	ctx     context.Context

	mu       sync.Mutex
	cur      *link
	silent   []*link
	off      bool // airplane mode
	connects int
}

// connect dials until it has a socket, then reads it on a goroutine of its
// own; reading is what answers Cablecar's pings.
func (d *device) connect() {
	for {
		if d.ctx.Err() != nil {
			return
		}
		l := &link{gate: newGate()}
		dialer := websocket.Dialer{
			HandshakeTimeout: 5 * time.Second,
			NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &radio{Conn: c, g: l.gate}, nil
			},
		}
		ws, _, err := dialer.DialContext(d.ctx, d.url, nil)
		if err != nil {
			log.Printf("%s: %v; trying again in a second", d.id, err)
			if !sleep(d.ctx, time.Second) {
				return
			}
			continue
		}
		l.ws = ws
		d.mu.Lock()
		d.cur = l
		d.connects++
		if d.off {
			l.gate.set(true) // it came back in airplane mode: as quiet as the one before
		}
		d.mu.Unlock()
		log.Printf("%s: connected", d.id)
		go d.read(l)
		return
	}
}

func (d *device) read(l *link) {
	for {
		if _, _, err := l.ws.ReadMessage(); err != nil {
			break
		}
	}
	l.ws.Close()
	d.mu.Lock()
	current := d.cur == l
	if current {
		d.cur = nil
	}
	d.mu.Unlock()
	if current && d.ctx.Err() == nil {
		log.Printf("%s: the connection ended; reconnecting", d.id)
		if sleep(d.ctx, 500*time.Millisecond) {
			d.connect()
		}
	}
}

func (d *device) airplane(on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.off = on
	if d.cur != nil {
		d.cur.gate.set(on)
	}
	log.Printf("%s: airplane mode %v", d.id, map[bool]string{true: "on", false: "off"}[on])
}

// swap leaves the current socket silent, never to speak again, and opens
// a new one: Cablecar holds two connections for the device until it finds
// the old one dead.
func (d *device) swap() {
	d.mu.Lock()
	old := d.cur
	d.cur = nil
	if old != nil {
		old.gate.set(true)
		d.silent = append(d.silent, old)
	}
	d.off = false
	d.mu.Unlock()
	log.Printf("%s: the old socket goes silent; a new one opens", d.id)
	go d.connect()
}

func (d *device) status() deviceStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := deviceStatus{ID: d.id, State: "connecting", Connects: d.connects, Silent: len(d.silent)}
	switch {
	case d.cur != nil && d.off:
		s.State = "airplane"
	case d.cur != nil:
		s.State = "online"
	}
	return s
}

func (d *device) closeAll() {
	d.mu.Lock()
	links := append([]*link{d.cur}, d.silent...)
	d.mu.Unlock()
	for _, l := range links {
		if l != nil {
			l.gate.kill()
			l.ws.Close()
		}
	}
}

// link is one socket and the gate its traffic passes.
type link struct {
	ws   *websocket.Conn
	gate *gate
}

// radio is the device's network: while the gate is shut, nothing is read
// (so no ping is seen, and no pong goes out) and nothing is written, but
// the TCP connection stays open.
type radio struct {
	net.Conn
	g *gate
}

func (r *radio) Read(p []byte) (int, error) {
	if err := r.g.pass(); err != nil {
		return 0, err
	}
	return r.Conn.Read(p)
}

func (r *radio) Write(p []byte) (int, error) {
	if err := r.g.pass(); err != nil {
		return 0, err
	}
	return r.Conn.Write(p)
}

type gate struct {
	mu   sync.Mutex
	cond *sync.Cond
	shut bool
	dead bool
}

func newGate() *gate {
	g := &gate{}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *gate) set(shut bool) {
	g.mu.Lock()
	g.shut = shut
	g.cond.Broadcast()
	g.mu.Unlock()
}

// kill ends the waits for good, at exit.
func (g *gate) kill() {
	g.mu.Lock()
	g.dead = true
	g.cond.Broadcast()
	g.mu.Unlock()
}

func (g *gate) pass() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.shut && !g.dead {
		g.cond.Wait()
	}
	if g.dead {
		return errors.New("device stopped")
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
