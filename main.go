// Command cablecar is a reverse-proxy sidecar that gives WebSockets to
// Rack-style apps. See README.md and docs/.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/cablecar/cablecar/cli"
	"github.com/cablecar/cablecar/config"
	"github.com/cablecar/cablecar/sidecar"
)

func main() { os.Exit(run()) }

// run returns the exit code: 0 after a clean stop, 2 for invalid
// configuration, 1 for anything else (including a second signal).
func run() int {
	if cli.Verb(os.Args[1:]) {
		return cli.Run(os.Args[1:], os.Environ(), os.Stdin, os.Stdout, os.Stderr, sidecar.Version)
	}
	cfg, flags, err := config.Parse(os.Args[1:], os.Environ(), os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintln(os.Stderr)
		cli.Usage(os.Stderr)
		return 0
	case err != nil:
		for _, w := range flags.Warnings {
			fmt.Fprintln(os.Stderr, "cablecar: warning:", w)
		}
		fmt.Fprintln(os.Stderr, "cablecar:", err)
		return 2
	case flags.Version:
		fmt.Println("cablecar", sidecar.Version)
		return 0
	case flags.Check:
		fmt.Print(cfg.Effective())
		return 0
	}

	if os.Getenv("GOGC") == "" {
		// An idle node's resident size is the collector's goal, not what
		// is live: at Go's default (GOGC=100) the heap grows to twice its
		// live size before a collection, and the runtime keeps those
		// pages. Cablecar's live heap is mostly its connections, which
		// allocate next to nothing while they idle, so a goal of 1.5× the
		// live heap costs little CPU and keeps about 1.5 KiB of resident
		// memory per connection off (docs/performance.md, "Memory per
		// idle connection"). GOGC in the environment still decides.
		debug.SetGCPercent(50)
	}
	log := sidecar.NewLogger(cfg.Log, os.Stderr)
	for _, w := range flags.Warnings {
		log.Warn().Msg(w)
	}
	sc, err := sidecar.New(cfg, log)
	if err != nil {
		log.Error().Err(err).Msg("cannot start")
		return 1
	}

	ctx, cancel := context.WithCancel(context.Background())
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-signals
		log.Info().Str("signal", sig.String()).Msg("signal received; another one exits at once")
		cancel()
		sig = <-signals
		log.Warn().Str("signal", sig.String()).Msg("second signal: exiting now")
		os.Exit(1)
	}()

	if err := sc.Run(ctx); err != nil {
		log.Error().Err(err).Msg("stopped")
		return 1
	}
	return 0
}
