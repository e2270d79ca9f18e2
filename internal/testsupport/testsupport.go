// Package testsupport is what tests share to run against real parts: a
// redis-server (or a Cluster of three) on a free loopback port in a
// temporary directory, killed when the test ends, and Eventually, the one
// way a test waits for a condition — with a deadline, never a fixed sleep.
//
// Only tests import it.
package testsupport

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// Eventually polls cond until it holds, and fails the test when it has
// not within the given time. what names the condition in the failure.
func Eventually(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	if !Poll(within, cond) {
		t.Fatalf("timed out after %v waiting for %s", within, what)
	}
}

// Poll is Eventually without the test: it polls cond, with a short pause
// growing from 2 ms to 100 ms between tries, and reports whether it held
// within the given time. A negative check ("nothing happens") is not
// written with it: wait for a condition that proves the chance was given.
func Poll(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	pause := 2 * time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(pause*2, 100*time.Millisecond)
	}
}

// SyncBuffer is an io.Writer that several goroutines may write to at once
// (a logger's output, a child process's), read back with String.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
