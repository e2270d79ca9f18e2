package proxy

import (
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"
)

// BenchmarkPassThrough measures one small GET through the proxy over
// loopback TCP, against a fasthttp upstream, with the access log on (at
// info, to io.Discard) as in production. The client and upstream are
// fasthttp too, so allocs/op is almost all the proxy's.
//
//	go test -run - -bench PassThrough -benchmem ./proxy/
func BenchmarkPassThrough(b *testing.B) {
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	up := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("text/plain")
		ctx.SetBodyString("hello world\n")
	}}
	go up.Serve(upLn)   //nolint:errcheck
	defer up.Shutdown() //nolint:errcheck

	cfg := testConfig("http://" + upLn.Addr().String())
	cfg.MaxConns = 512
	p := New(cfg, zerolog.Nop().Level(zerolog.InfoLevel), prometheus.NewRegistry())
	p.log = zerolog.New(discard{}).Level(zerolog.InfoLevel)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := NewServer(cfg, p.ServeHTTP, p.log)
	go srv.Serve(ln)     //nolint:errcheck
	defer srv.Shutdown() //nolint:errcheck

	client := &fasthttp.HostClient{Addr: ln.Addr().String(), MaxConns: 512}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req := fasthttp.AcquireRequest()
		resp := fasthttp.AcquireResponse()
		req.SetRequestURI("http://bench.local/hello?x=1")
		for pb.Next() {
			if err := client.DoTimeout(req, resp, 5*time.Second); err != nil || resp.StatusCode() != 200 {
				b.Errorf("%v %d", err, resp.StatusCode())
				return
			}
		}
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
