//go:build linux

// Command loadgen is the open-loop HTTP/1.1 load generator used by the proxy
// benchmark (e2e/bench/proxy.sh).
//
// With -rate R it schedules request i at start + i/R, whatever the target is
// doing, and measures each request's latency from that scheduled time. A
// target that stalls therefore pays for every request it delayed, not only for
// the one it was serving when it stalled: this is what closed-loop tools such
// as wrk hide ("coordinated omission"). The time between the scheduled and
// the actual send is reported separately as send lag: when it grows, either
// every connection was busy (the target is queueing) or this process could not
// keep up.
//
// With -rate 0 it runs closed-loop (each connection sends as soon as the
// previous answer arrived) and measures latency from the actual send.
//
// Requests go over -c keep-alive connections; a free connection takes the next
// scheduled request. Every latency is recorded and percentiles are exact.
// One JSON line goes to stdout and one human line to stderr.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
)

// Bounds that keep a mistyped flag from turning into an unbounded load run.
const (
	maxDuration    = 10 * time.Minute
	maxConnections = 4096
)

type options struct {
	target      *url.URL
	rate        float64
	duration    time.Duration
	warmup      time.Duration
	conns       int
	timeout     time.Duration
	maxRequests int64
	label       string
	stallProbe  time.Duration
}

// result is the machine-readable summary; field names are what
// e2e/bench/proxy.sh reads.
type result struct {
	Label       string  `json:"label,omitempty"`
	URL         string  `json:"url"`
	Mode        string  `json:"mode"`
	TargetRate  float64 `json:"target_rps"`
	Connections int     `json:"connections"`
	DurationS   float64 `json:"duration_s"`
	Scheduled   int64   `json:"scheduled"`
	Completed   int64   `json:"completed"`
	OK          int64   `json:"ok"`
	Non2xx      int64   `json:"non_2xx"`
	Errors      int64   `json:"errors"`
	Unsent      int64   `json:"unsent"`
	Achieved    float64 `json:"achieved_rps"`
	P50         float64 `json:"p50_ms"`
	P90         float64 `json:"p90_ms"`
	P99         float64 `json:"p99_ms"`
	P999        float64 `json:"p999_ms"`
	Max         float64 `json:"max_ms"`
	Mean        float64 `json:"mean_ms"`
	LagP50      float64 `json:"send_lag_p50_ms"`
	LagP99      float64 `json:"send_lag_p99_ms"`
	LagMax      float64 `json:"send_lag_max_ms"`
	FirstError  string  `json:"first_error,omitempty"`
}

func main() {
	opt, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	if opt.stallProbe > 0 {
		res := probeStalls(opt.stallProbe)
		printJSON(res)
		fmt.Fprintf(os.Stderr, "loadgen stall probe: %d gaps over 1 ms, %d over 5 ms, %.1f ms lost, longest %.3f ms, in %v\n",
			res.Over1ms, res.Over5ms, res.LostMs, res.MaxGapMs, opt.stallProbe)
		return
	}
	res := run(opt)
	printJSON(res)
	fmt.Fprintf(os.Stderr,
		"loadgen %s %s: %.0f req/s achieved (target %s), %d ok, %d non-2xx, %d errors, %d unsent; "+
			"latency p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, max %.3f ms; send lag p99 %.3f ms\n",
		res.Mode, res.URL, res.Achieved, rateString(res.TargetRate), res.OK, res.Non2xx, res.Errors, res.Unsent,
		res.P50, res.P90, res.P99, res.Max, res.LagP99)
	if res.OK == 0 {
		os.Exit(1)
	}
}

func printJSON(v any) {
	line, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	fmt.Println(string(line))
}

func rateString(r float64) string {
	if r == 0 {
		return "max"
	}
	return fmt.Sprintf("%.0f", r)
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	rawURL := fs.String("url", "", "target, http://host:port/path (required)")
	rate := fs.Float64("rate", 0, "requests per second on a fixed schedule; 0 = closed loop, as fast as the target answers")
	duration := fs.Duration("duration", 0, "how long to measure, after -warmup (required, at most 10m)")
	warmup := fs.Duration("warmup", 0, "load at the same rate before measuring; not recorded")
	conns := fs.Int("c", 64, "keep-alive connections")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline for one request, connect included")
	maxRequests := fs.Int64("max-requests", 5_000_000, "hard cap on requests sent, warm-up included")
	label := fs.String("label", "", "free text copied into the JSON line")
	stallProbe := fs.Duration("stall-probe", 0, "instead of load, spin one thread this long and report how often it was "+
		"kept off the CPU: the machine's own latency noise (at most 10m)")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	opt := options{
		rate: *rate, duration: *duration, warmup: *warmup, conns: *conns,
		timeout: *timeout, maxRequests: *maxRequests, label: *label, stallProbe: *stallProbe,
	}
	if opt.stallProbe != 0 {
		if opt.stallProbe < 0 || opt.stallProbe > maxDuration {
			return opt, fmt.Errorf("-stall-probe %v: must be positive and at most %v", opt.stallProbe, maxDuration)
		}
		return opt, nil
	}
	u, err := url.Parse(*rawURL)
	switch {
	case *rawURL == "":
		return opt, errors.New("-url is required")
	case err != nil:
		return opt, fmt.Errorf("-url %q: %w", *rawURL, err)
	case u.Scheme != "http" || u.Host == "":
		return opt, fmt.Errorf("-url %q: only http://host:port/path is supported", *rawURL)
	}
	opt.target = u
	switch {
	case opt.duration <= 0:
		return opt, errors.New("-duration is required and must be positive")
	case opt.duration+opt.warmup > maxDuration:
		return opt, fmt.Errorf("-duration plus -warmup %v is over the %v limit", opt.duration+opt.warmup, maxDuration)
	case opt.warmup < 0:
		return opt, errors.New("-warmup must not be negative")
	case opt.rate < 0 || math.IsNaN(opt.rate) || math.IsInf(opt.rate, 0):
		return opt, fmt.Errorf("-rate %v: must be a finite number >= 0", opt.rate)
	case opt.conns < 1 || opt.conns > maxConnections:
		return opt, fmt.Errorf("-c %d: must be between 1 and %d", opt.conns, maxConnections)
	case opt.timeout <= 0:
		return opt, errors.New("-timeout must be positive")
	case opt.maxRequests < 1:
		return opt, errors.New("-max-requests must be at least 1")
	}
	if opt.rate > 0 && opt.rate*(opt.duration+opt.warmup).Seconds() > float64(opt.maxRequests) {
		return opt, fmt.Errorf("-rate %.0f for %v would send more than -max-requests %d",
			opt.rate, opt.duration+opt.warmup, opt.maxRequests)
	}
	return opt, nil
}

// sample is one measured request, in nanoseconds.
type sample struct {
	latency int64 // from the scheduled send (open loop) or the actual send (closed loop) to the full answer
	lag     int64 // from the scheduled send to the actual send; 0 in closed loop
}

// worker owns one connection and the samples taken on it, so recording needs
// no lock.
type worker struct {
	opt      *options
	req      []byte
	conn     net.Conn
	br       *bufio.Reader
	resp     fasthttp.Response
	samples  []sample
	ok       int64
	non2xx   int64
	errs     int64
	done     int64
	lastSent time.Time
	err      error // first error seen
}

// run drives the whole load and returns its summary.
func run(opt options) result {
	req := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: cablecar-loadgen\r\n\r\n",
		opt.target.RequestURI(), opt.target.Host))

	openLoop := opt.rate > 0
	total := opt.maxRequests
	var interval float64 // nanoseconds between scheduled sends
	if openLoop {
		interval = 1e9 / opt.rate
		total = min(total, int64(math.Ceil(opt.rate*(opt.warmup+opt.duration).Seconds())))
	}

	// Workers start dialling now; the clock starts a little later so that
	// connection set-up is not billed to the first requests.
	start := time.Now().Add(50 * time.Millisecond)
	measureFrom := start.Add(opt.warmup)
	end := measureFrom.Add(opt.duration)
	// An overloaded target makes an open-loop run fall behind its schedule;
	// past this point the requests not yet sent are counted as unsent instead
	// of letting the run go on without bound.
	hardStop := end.Add(opt.timeout + time.Second)
	slotTime := func(slot int64) time.Time {
		return start.Add(time.Duration(float64(slot) * interval))
	}

	// slots carries the index of each scheduled request from the pacer to
	// whichever connection is free first; closed loop has no pacer.
	var slots chan int64
	if openLoop {
		slots = make(chan int64, min(total, 1<<16))
		go pace(slots, slotTime, total, hardStop)
	}
	var claimed atomic.Int64 // closed loop: requests taken so far, against the cap

	workers := make([]*worker, opt.conns)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{opt: &opt, req: req}
		if openLoop {
			w.samples = make([]sample, 0, total/int64(opt.conns)+16)
		}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer w.close()
			// Dial before the clock starts; a failure here is retried per request.
			_ = w.dial()
			for {
				var sched time.Time
				if openLoop {
					slot, ok := <-slots
					if !ok {
						return
					}
					sched = slotTime(slot)
				} else {
					if claimed.Add(1) > total {
						return
					}
					if d := time.Until(start); d > 0 {
						time.Sleep(d)
					}
				}
				sent := time.Now()
				if !openLoop {
					if !sent.Before(end) {
						return
					}
					sched = sent
				}
				if sent.After(hardStop) {
					// Keep draining so the pacer is never blocked; what is
					// left over is reported as unsent.
					continue
				}
				status, err := w.do(sent)
				finished := time.Now()
				if sched.Before(measureFrom) {
					continue
				}
				w.record(sched, sent, finished, status, err)
			}
		}()
	}
	wg.Wait()

	res := result{
		Label: opt.label, URL: opt.target.String(), Mode: "open-loop", TargetRate: opt.rate,
		Connections: opt.conns,
	}
	if !openLoop {
		res.Mode = "closed-loop"
	}
	var latencies, lags []int64
	var lastSent time.Time
	for _, w := range workers {
		res.Completed += w.done
		res.OK += w.ok
		res.Non2xx += w.non2xx
		res.Errors += w.errs
		if w.err != nil && res.FirstError == "" {
			res.FirstError = w.err.Error()
		}
		if w.lastSent.After(lastSent) {
			lastSent = w.lastSent
		}
		for _, s := range w.samples {
			latencies = append(latencies, s.latency)
			lags = append(lags, s.lag)
		}
	}
	if openLoop {
		// The first slot measured, found with the very arithmetic the
		// workers use, so rounding cannot make a request go missing.
		first := min(int64(float64(opt.warmup)/interval), total)
		for first > 0 && !slotTime(first-1).Before(measureFrom) {
			first--
		}
		for first < total && slotTime(first).Before(measureFrom) {
			first++
		}
		measured := total - first
		res.Scheduled = measured
		res.Unsent = max(0, measured-res.Completed)
	} else {
		res.Scheduled = res.Completed
	}
	// The rate achieved is the rate requests went out at: an open-loop run
	// that fell behind sent its last one after the planned end. A slow last
	// answer does not lower it.
	elapsed := max(opt.duration, lastSent.Sub(measureFrom))
	res.DurationS = elapsed.Seconds()
	if elapsed > 0 {
		res.Achieved = float64(res.OK) / elapsed.Seconds()
	}
	slices.Sort(latencies)
	slices.Sort(lags)
	res.P50 = percentileMs(latencies, 50)
	res.P90 = percentileMs(latencies, 90)
	res.P99 = percentileMs(latencies, 99)
	res.P999 = percentileMs(latencies, 99.9)
	res.Max = percentileMs(latencies, 100)
	res.Mean = meanMs(latencies)
	if openLoop {
		res.LagP50 = percentileMs(lags, 50)
		res.LagP99 = percentileMs(lags, 99)
		res.LagMax = percentileMs(lags, 100)
	}
	return res
}

// percentileMs returns the nearest-rank percentile p of sorted ns values, in
// milliseconds.
func percentileMs(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return float64(sorted[rank-1]) / 1e6
}

func meanMs(v []int64) float64 {
	if len(v) == 0 {
		return 0
	}
	var sum float64
	for _, x := range v {
		sum += float64(x)
	}
	return sum / float64(len(v)) / 1e6
}

// stallReport is the result of -stall-probe.
type stallReport struct {
	Mode     string  `json:"mode"`
	Seconds  float64 `json:"duration_s"`
	Over1ms  int     `json:"gaps_over_1ms"`
	Over5ms  int     `json:"gaps_over_5ms"`
	LostMs   float64 `json:"lost_ms"` // total time in gaps over 1 ms
	MaxGapMs float64 `json:"max_gap_ms"`
}

// probeStalls spins on the clock on one OS thread. On an idle machine every
// read follows the last within microseconds; a longer gap is time the thread
// was kept off the CPU (by the kernel, or by the hypervisor taking the vCPU
// away). Such gaps land in the latency of any request in flight at the time,
// whatever the proxy, so they bound how small a latency difference a run on
// this machine can show.
func probeStalls(d time.Duration) stallReport {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r := stallReport{Mode: "stall-probe", Seconds: d.Seconds()}
	start := time.Now()
	end := start.Add(d)
	var maxGap, lost time.Duration
	for prev := start; prev.Before(end); {
		now := time.Now()
		if gap := now.Sub(prev); gap > time.Millisecond {
			r.Over1ms++
			lost += gap
			if gap > 5*time.Millisecond {
				r.Over5ms++
			}
			maxGap = max(maxGap, gap)
		}
		prev = now
	}
	r.LostMs = float64(lost) / 1e6
	r.MaxGapMs = float64(maxGap) / 1e6
	return r
}

// pace hands out request slots on schedule, then closes slots.
//
// It waits on a timerfd through the Go netpoller rather than with time.Sleep:
// the Go timer rounds sleeps under a millisecond up to about a millisecond
// when the process is otherwise idle, and that error would be billed as
// latency to every request. Waiting in the netpoller (not in a blocking
// syscall) also leaves the pacer's P free, so a worker woken by a send runs at
// once instead of waiting for the runtime to retake the P.
func pace(slots chan<- int64, slotTime func(int64) time.Time, total int64, hardStop time.Time) {
	defer close(slots)
	wait := newWaiter()
	defer wait.close()
	for slot := int64(0); slot < total; slot++ {
		wait.until(slotTime(slot))
		if time.Now().After(hardStop) {
			return
		}
		slots <- slot
	}
}

// waiter sleeps until a point in time with the kernel's timer precision. If
// no timerfd can be had it falls back to time.Sleep.
type waiter struct {
	fd   int
	file *os.File // fd, registered with the netpoller
	buf  [8]byte
}

func newWaiter() *waiter {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen: timerfd unavailable, pacing with time.Sleep:", err)
		return &waiter{fd: -1}
	}
	return &waiter{fd: fd, file: os.NewFile(uintptr(fd), "timerfd")}
}

func (w *waiter) until(at time.Time) {
	d := time.Until(at)
	if d <= 0 {
		return
	}
	if w.file == nil {
		time.Sleep(d)
		return
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	if err := unix.TimerfdSettime(w.fd, 0, &spec, nil); err != nil {
		time.Sleep(d)
		return
	}
	// The read parks this goroutine until the timer fires; it returns the
	// number of expirations, which is always 1 for a one-shot timer.
	if _, err := w.file.Read(w.buf[:]); err != nil {
		time.Sleep(time.Until(at))
	}
}

func (w *waiter) close() {
	if w.file != nil {
		_ = w.file.Close()
	}
}

// record counts one measured request and keeps its timings.
func (w *worker) record(sched, sent, finished time.Time, status int, err error) {
	w.done++
	w.lastSent = sent
	switch {
	case err != nil:
		w.errs++
		if w.err == nil {
			w.err = err
		}
		return
	case status < 200 || status > 299:
		w.non2xx++
		if w.err == nil {
			w.err = fmt.Errorf("status %d", status)
		}
	default:
		w.ok++
	}
	w.samples = append(w.samples, sample{
		latency: int64(finished.Sub(sched)),
		lag:     int64(sent.Sub(sched)),
	})
}

func (w *worker) dial() error {
	if w.conn != nil {
		return nil
	}
	c, err := net.DialTimeout("tcp", w.opt.target.Host, w.opt.timeout)
	if err != nil {
		return err
	}
	w.conn = c
	if w.br == nil {
		w.br = bufio.NewReaderSize(c, 16<<10)
	} else {
		w.br.Reset(c)
	}
	return nil
}

func (w *worker) close() {
	if w.conn != nil {
		_ = w.conn.Close()
		w.conn = nil
	}
}

// do sends one request and reads the whole answer. Any error drops the
// connection; the next request dials a new one.
func (w *worker) do(sent time.Time) (int, error) {
	if err := w.dial(); err != nil {
		return 0, err
	}
	if err := w.conn.SetDeadline(sent.Add(w.opt.timeout)); err != nil {
		w.close()
		return 0, err
	}
	if _, err := w.conn.Write(w.req); err != nil {
		w.close()
		return 0, err
	}
	w.resp.Reset()
	if err := w.resp.Read(w.br); err != nil {
		w.close()
		return 0, err
	}
	if w.resp.ConnectionClose() {
		w.close()
	}
	return w.resp.StatusCode(), nil
}
