package e2e

// Not behind the soak tag: the record and its checks are plain Go, and
// TestSoakRecordChecks, below, proves in a millisecond that the soak's
// checks can fail.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// soakRecord is the app's record (testdata/soakapp), read as it grows: the
// app appends, the soak reads what has been appended since the last time,
// up to the last whole line.
type soakRecord struct {
	path   string
	offset int64
	rest   []byte // a line not yet finished

	accepted map[string]bool // connection ids the app accepted
	conns    map[string]*connLog
	lines    int // lines read: every arrival, duplicates included
	bad      []string
}

// connLog is what the app received of one connection, each event id once
// (its first arrival), in arrival order.
type connLog struct {
	seen   map[string]bool
	events []appEvent
	closes []appEvent
}

// appEvent is one event as the app recorded it.
type appEvent struct {
	id     string
	n      int64 // the counter after the last colon of the id
	typ    string
	detail string // message: the client's sequence number; close: code/by
}

func newSoakRecord(path string) *soakRecord {
	return &soakRecord{path: path, accepted: map[string]bool{}, conns: map[string]*connLog{}}
}

// update reads what the app has appended since the last call.
func (r *soakRecord) update() error {
	f, err := os.Open(r.path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(r.offset, io.SeekStart); err != nil {
		return err
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<30))
	if err != nil {
		return err
	}
	r.offset += int64(len(data))
	data = append(r.rest, data...)
	last := bytes.LastIndexByte(data, '\n')
	if last < 0 {
		r.rest = data
		return nil
	}
	r.rest = slices.Clone(data[last+1:])
	for line := range strings.SplitSeq(string(data[:last]), "\n") {
		r.add(line)
	}
	return nil
}

func (r *soakRecord) add(line string) {
	r.lines++
	f := strings.Split(line, "\t")
	switch {
	case len(f) == 2 && f[0] == "A":
		r.accepted[f[1]] = true
	case len(f) == 5 && f[0] == "E":
		conn, id := f[1], f[2]
		cut := strings.LastIndexByte(id, ':')
		n, err := strconv.ParseInt(id[cut+1:], 10, 64)
		if cut < 0 || err != nil || id[:cut] != conn {
			r.bad = append(r.bad, line)
			return
		}
		l := r.conns[conn]
		if l == nil {
			l = &connLog{seen: map[string]bool{}}
			r.conns[conn] = l
		}
		if l.seen[id] {
			return // a retry: the app has it already
		}
		l.seen[id] = true
		ev := appEvent{id: id, n: n, typ: f[3], detail: f[4]}
		l.events = append(l.events, ev)
		if ev.typ == "close" {
			l.closes = append(l.closes, ev)
		}
	default:
		r.bad = append(r.bad, line)
	}
}

// events is the number of distinct events the app received.
func (r *soakRecord) events() int {
	n := 0
	for _, l := range r.conns {
		n += len(l.events)
	}
	return n
}

// mustClose are the connections that must get a close event: those the
// app heard any event of, and those a client saw open.
func (r *soakRecord) mustClose(opened []string) []string {
	set := map[string]bool{}
	for id := range r.conns {
		set[id] = true
	}
	for _, id := range opened {
		set[id] = true
	}
	return slices.Sorted(func(yield func(string) bool) {
		for id := range set {
			if !yield(id) {
				return
			}
		}
	})
}

// lost are the connections of must without a close event.
func (r *soakRecord) lost(must []string) []string {
	var out []string
	for _, id := range must {
		if l := r.conns[id]; l == nil || len(l.closes) == 0 {
			out = append(out, id)
		}
	}
	return out
}

// doubled are the connections with more than one distinct close event: an
// app counting presence would count them out twice.
func (r *soakRecord) doubled() []string {
	var out []string
	for id, l := range r.conns {
		if len(l.closes) > 1 {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// reordered are the connections whose events, each taken at its first
// arrival, did not arrive in the order Cablecar numbered them, or whose
// messages did not arrive in the order the client sent them, or that had an
// event after their close; with why, for the report.
func (r *soakRecord) reordered() map[string]string {
	out := map[string]string{}
	for id, l := range r.conns {
		if why := l.disorder(); why != "" {
			out[id] = why
		}
	}
	return out
}

func (l *connLog) disorder() string {
	lastSeq := int64(0)
	for i, ev := range l.events {
		if i > 0 {
			prev := l.events[i-1]
			if ev.n <= prev.n {
				return fmt.Sprintf("%s (%s) arrived after %s (%s)", ev.id, ev.typ, prev.id, prev.typ)
			}
			// A second close is counted as doubled, not here.
			if prev.typ == "close" && ev.typ != "close" {
				return fmt.Sprintf("%s (%s) arrived after the close %s", ev.id, ev.typ, prev.id)
			}
		}
		if ev.typ == "message" {
			seq, err := strconv.ParseInt(ev.detail, 10, 64)
			if err != nil {
				return fmt.Sprintf("%s: message %q is not a client's sequence number", ev.id, ev.detail)
			}
			if seq <= lastSeq {
				return fmt.Sprintf("%s: message %d after message %d", ev.id, seq, lastSeq)
			}
			lastSeq = seq
		}
	}
	return ""
}

// closeKinds counts the close events by code/by.
func (r *soakRecord) closeKinds() map[string]int {
	out := map[string]int{}
	for _, l := range r.conns {
		for _, c := range l.closes {
			out[c.detail]++
		}
	}
	return out
}

// parseLogLine is one JSON log line of a node.
func parseLogLine(line string) (LogLine, bool) {
	var l LogLine
	if err := json.Unmarshal([]byte(line), &l); err != nil {
		return nil, false
	}
	return l, true
}

// TestSoakRecordChecks feeds the soak's checker a record with one of each
// broken invariant, and retries and a lost node's close that are fine.
func TestSoakRecordChecks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "record.tsv")
	lines := []string{
		// fine: retried events, a node_lost close with the fixed id
		"A\tc_ok", "E\tc_ok\tc_ok:1\topen\t", "E\tc_ok\tc_ok:2\tmessage\t1",
		"E\tc_ok\tc_ok:1\topen\t", "E\tc_ok\tc_ok:2\tmessage\t1", "E\tc_ok\tc_ok:3\tmessage\t2",
		"E\tc_ok\tc_ok:9007199254740991\tclose\t1006/node_lost", "E\tc_ok\tc_ok:9007199254740991\tclose\t1006/node_lost",
		// lost: opened, chatted, no close
		"A\tc_lost", "E\tc_lost\tc_lost:1\topen\t",
		// doubled: its own close and a node_lost one
		"A\tc_two", "E\tc_two\tc_two:1\topen\t", "E\tc_two\tc_two:2\tclose\t1000/client",
		"E\tc_two\tc_two:9007199254740991\tclose\t1006/node_lost",
		// reordered: event 3 before event 2
		"A\tc_order", "E\tc_order\tc_order:1\topen\t", "E\tc_order\tc_order:3\tmessage\t2",
		"E\tc_order\tc_order:2\tmessage\t1", "E\tc_order\tc_order:4\tclose\t1000/client",
		// reordered: messages numbered in order but sent the other way round
		"A\tc_swap", "E\tc_swap\tc_swap:1\tmessage\t2", "E\tc_swap\tc_swap:2\tmessage\t1",
		"E\tc_swap\tc_swap:3\tclose\t1000/client",
	}
	// Written in two parts, the first ending mid-line, as the app appends
	// while the soak reads.
	text := strings.Join(lines, "\n") + "\n"
	half := strings.Index(text, "c_lost:1") + 3
	if err := os.WriteFile(path, []byte(text[:half]), 0o600); err != nil {
		t.Fatal(err)
	}
	r := newSoakRecord(path)
	if err := r.update(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(text[half:]); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := r.update(); err != nil {
		t.Fatal(err)
	}

	if len(r.bad) > 0 {
		t.Fatalf("unreadable lines: %q", r.bad)
	}
	must := r.mustClose([]string{"c_ok", "c_client_only"})
	if want := []string{"c_client_only", "c_lost", "c_ok", "c_order", "c_swap", "c_two"}; !slices.Equal(must, want) {
		t.Errorf("mustClose = %v, want %v", must, want)
	}
	if got, want := r.lost(must), []string{"c_client_only", "c_lost"}; !slices.Equal(got, want) {
		t.Errorf("lost = %v, want %v", got, want)
	}
	if got, want := r.doubled(), []string{"c_two"}; !slices.Equal(got, want) {
		t.Errorf("doubled = %v, want %v", got, want)
	}
	reordered := r.reordered()
	if got, want := slices.Sorted(maps.Keys(reordered)), []string{"c_order", "c_swap"}; !slices.Equal(got, want) {
		t.Errorf("reordered = %v (%v), want %v", got, reordered, want)
	}
	if got := r.events(); got != 15 {
		t.Errorf("events = %d, want 15 distinct", got)
	}
	if got := r.closeKinds()["1006/node_lost"]; got != 2 {
		t.Errorf("node_lost closes = %d, want 2", got)
	}
}
