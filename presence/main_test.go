package presence

import (
	"os"
	"testing"

	"github.com/cablecar/cablecar/internal/leakcheck"
)

// TestMain fails the run when a goroutine a test started outlives the
// tests (see internal/leakcheck).
func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }
