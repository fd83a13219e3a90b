package main

import (
	"context"
	"fmt"
	"testing"

	"github.com/tesserakv/tessera/bench"
	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/server"
)

// Tessera in-process under tessbench's workloads (100 clients over 10
// connections, 256-byte values, every node an endpoint), so a CPU profile
// covers client and servers together:
//
//	go test ./cmd/tessbench/ -run '^$' -bench Tessbench -benchtime 20000x -cpuprofile cpu.out
func benchmarkWorkload(b *testing.B, nodes int, workload string, leaderOnly bool) {
	// The tessera binary's defaults, not testcluster's faster ticks.
	c := testcluster.Start(b, nodes, func(cfg *server.Config) {
		def := server.DefaultConfig()
		cfg.HeartbeatInterval, cfg.ElectionTimeout = def.HeartbeatInterval, def.ElectionTimeout
	})
	cfg := bench.DefaultConfig()
	cfg.Endpoints = c.Endpoints()
	if leaderOnly {
		cfg.Endpoints = []string{c.Leader().ClientURL}
	}
	cfg.Total = int64(b.N)
	cfg.SequentialKeys, cfg.KeySpace = true, 0
	b.ResetTimer()
	res, err := bench.Run(context.Background(), workload, cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	if res.Errors > 0 {
		b.Fatalf("%d errors: %v", res.Errors, res.ErrorSamples)
	}
	b.ReportMetric(res.Throughput, "ops/s")
	b.ReportMetric(res.Latency.P99, "p99-ms")
}

func BenchmarkTessbench(b *testing.B) {
	for _, nodes := range []int{1, 3} {
		for _, workload := range []string{"put", "txn-put"} {
			b.Run(fmt.Sprintf("%s/%d-node", workload, nodes), func(b *testing.B) { benchmarkWorkload(b, nodes, workload, false) })
		}
	}
	b.Run("put/3-node-leader-only", func(b *testing.B) { benchmarkWorkload(b, 3, "put", true) })
}
