package e2e

import (
	"os"
	"testing"

	"github.com/cablecar/cablecar/internal/leakcheck"
)

// TestMain runs the tests through Main (tools present, no process left
// behind), and then fails the run when a goroutine a test started outlives
// the tests: a client's reader, a test server, a process's output copier.
func TestMain(m *testing.M) {
	leaks := leakcheck.Start()
	os.Exit(leaks.Check(Main(m)))
}
