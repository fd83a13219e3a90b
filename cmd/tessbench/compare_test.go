package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCompareScriptQuick runs bench/compare.sh --quick on one node. It builds
// etcd from the module proxy (once, into ~/.cache/tessera-bench) and takes a
// minute or two, so it runs only when asked:
//
//	TESSBENCH_COMPARE=1 go test ./cmd/tessbench/ -run CompareScript -v
func TestCompareScriptQuick(t *testing.T) {
	if os.Getenv("TESSBENCH_COMPARE") == "" {
		t.Skip("set TESSBENCH_COMPARE=1 to run bench/compare.sh --quick")
	}
	out := t.TempDir()
	cmd := exec.Command("bash", "../../bench/compare.sh", "--quick", "--topologies", "1", "--out", out)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("compare.sh: %v\n%s", err, stdout)
	}
	md, err := os.ReadFile(filepath.Join(out, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"### 1-node", "| put |", "| range-linearizable |", "| txn-put |", "| lease |", "| list |",
		"| watch |", "| k8s |", "### Server CPU and memory", "### Large lists", "| 1-node | tessera | 2000 × 4096 B |"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("results.md lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(string(md), "### Failed runs") {
		t.Errorf("some runs failed:\n%s", md)
	}
	for _, f := range []string{"throughput-1-node.svg", "latency-1-node.svg"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
}
