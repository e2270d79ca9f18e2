// Package testsupport is what tests share to run against real parts: a
// redis-server (or a Cluster of three) on a free loopback port in a
// temporary directory, killed when the test ends, and Eventually, the one
// way a test waits for a condition — with a deadline, never a fixed sleep.
//
// Only tests import it.
package testsupport

import (
	"testing"
	"time"
)

// Eventually polls cond until it holds, and fails the test when it has
// not within the given time. what names the condition in the failure.
func Eventually(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
