//go:build crashpoints

package main

import (
	"os"
	"path/filepath"
	"syscall"

	"github.com/tesserakv/tessera/node"
)

// Crash points, for tests that kill a node with SIGKILL at a step of a write
// spanning ranges (tests/spanning_kill_test.go). With TESSERA_CRASH_DIR set,
// a node that reaches step S removes the file named S in that directory, if
// there is one, and kills itself. A test arms a step by creating its file;
// whichever node removes it first dies there, and only that one.
//
// The steps: "held" (the coordinator holds every range), "recorded" (it has
// recorded the commit), "committed" (one range has applied the commit),
// "resolve-aborted" and "resolve-committed" (a range's leader settling an
// abandoned hold has the recorded outcome, or recorded the abort, and has
// not yet applied it).
func init() {
	installCrashPoints = func(cfg *node.Config) {
		dir := os.Getenv("TESSERA_CRASH_DIR")
		if dir == "" {
			return
		}
		crashAt := func(step string) {
			if os.Remove(filepath.Join(dir, step)) == nil {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // the signal ends the process
			}
		}
		k := &cfg.Knobs
		k.AfterTxnHeld = func([]byte) { crashAt("held") }
		k.AfterTxnRecorded = func([]byte) { crashAt("recorded") }
		k.AfterTxnCommit = func([]byte, uint64) { crashAt("committed") }
		k.AfterHoldDecided = func(_ []byte, committed bool) {
			if committed {
				crashAt("resolve-committed")
			} else {
				crashAt("resolve-aborted")
			}
		}
	}
}
