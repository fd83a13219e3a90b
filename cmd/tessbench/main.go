// Command tessbench is a load generator for etcd-v3-API servers (Tessera,
// etcd): put, range, txn-put, txn-span, watch, lease, list and a Kubernetes-like mix,
// plus an empty-handler server that measures the machine's ceiling and a
// report that sets results side by side. Run "tessbench --help"; the logic
// lives in package bench.
package main

import (
	"os"

	"github.com/tesserakv/tessera/bench"
)

func main() {
	os.Exit(bench.Main(os.Args[1:], os.Stdout, os.Stderr))
}
