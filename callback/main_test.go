package callback

import (
	"os"
	"testing"

	"github.com/cablecar/cablecar/internal/leakcheck"
)

// TestMain fails the run when a goroutine a test started outlives the
// tests (see internal/leakcheck): among them a Stream's and the close
// queue's, which must end once their queue is empty.
func TestMain(m *testing.M) { os.Exit(leakcheck.Main(m)) }
