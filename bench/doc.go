// Package bench is tessbench's engine: workload generators for any
// etcd-v3-API endpoint (Tessera or etcd), the request driver that runs them
// with a fixed number of clients over a fixed number of connections, latency
// histograms (HdrHistogram), /proc sampling of server processes, the JSON and
// human reports, the Markdown/SVG comparison report, and an etcd KV server
// with empty handlers that measures the machine's ceiling.
//
// Pure pieces (key and value generation, the rate schedule, compare-and-swap
// bookkeeping, percentiles, report rendering) are plain functions and structs
// tested directly; the driver (runner.go) and the workloads feed them.
//
// It never starts or stops the servers it measures: bench/compare.sh does.
package bench
