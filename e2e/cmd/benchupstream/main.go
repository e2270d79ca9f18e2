// Command benchupstream is the fast upstream used by the proxy benchmark
// (e2e/bench/proxy.sh). It answers GET /hello with "hello world\n" and does as
// little else as possible, so that what the benchmark measures is the proxy in
// front of it rather than the app behind it.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/valyala/fasthttp"
)

var (
	helloBody   = []byte("hello world\n")
	textPlain   = []byte("text/plain")
	notFoundMsg = []byte("not found\n")
)

func handle(ctx *fasthttp.RequestCtx) {
	if !ctx.IsGet() || string(ctx.Path()) != "/hello" {
		ctx.SetStatusCode(fasthttp.StatusNotFound)
		ctx.Response.Header.SetContentTypeBytes(textPlain)
		ctx.SetBody(notFoundMsg)
		return
	}
	ctx.Response.Header.SetContentTypeBytes(textPlain)
	ctx.SetBody(helloBody)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:3001", "address to listen on (loopback only for benchmarks)")
	flag.Parse()

	srv := &fasthttp.Server{
		Handler: handle,
		Name:    "benchupstream",
		// The benchmark's clients and proxies all keep connections alive;
		// nothing here should close them early or add work per request.
		NoDefaultDate:                 true,
		DisableHeaderNamesNormalizing: true,
	}
	if err := srv.ListenAndServe(*addr); err != nil {
		fmt.Fprintln(os.Stderr, "benchupstream:", err)
		os.Exit(1)
	}
}
