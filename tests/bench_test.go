package tests

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// Benchmarks through the gRPC API on one in-process node with the real client.
// Run: go test ./tests/ -run '^$' -bench . -benchtime 20000x

var benchValue = strings.Repeat("v", 256)

func benchmarkPut(b *testing.B, clients int) {
	c := testcluster.Start(b, 1)
	// 10 connections shared by the clients, as etcd's benchmark tool does.
	conns := make([]*clientv3.Client, min(clients, 10))
	for i := range conns {
		conns[i] = c.Client()
	}
	ctx := context.Background()
	var seq atomic.Int64
	b.SetParallelism((clients + 1) / 2) // GOMAXPROCS=2 on our machines
	defer reportCPU(b)()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		cli := conns[int(seq.Add(1))%len(conns)]
		for pb.Next() {
			if _, err := cli.Put(ctx, fmt.Sprintf("bench/%012d", seq.Add(1)), benchValue); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// reportCPU reports the process's CPU time (user + system, server and
// client together) per operation from the call until the returned func
// runs: on a shared 2-core machine it varies less than ns/op does.
func reportCPU(b *testing.B) func() {
	start := processCPU(b)
	return func() {
		b.ReportMetric(float64((processCPU(b)-start).Microseconds())/float64(b.N), "cpu-µs/op")
	}
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkPut1Client(b *testing.B) {
	c := testcluster.Start(b, 1)
	cli := c.Client()
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		if _, err := cli.Put(ctx, fmt.Sprintf("bench/%012d", i), benchValue); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPut64Clients(b *testing.B) { benchmarkPut(b, 64) }

func BenchmarkRangeLinearizable(b *testing.B) {
	c := testcluster.Start(b, 1)
	cli := c.Client()
	ctx := context.Background()
	for i := range 1000 {
		if _, err := cli.Put(ctx, fmt.Sprintf("bench/%04d", i), benchValue); err != nil {
			b.Fatal(err)
		}
	}
	var seq atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := cli.Get(ctx, fmt.Sprintf("bench/%04d", seq.Add(1)%1000)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkPut64ClientsRanges compares one range with 16: the same 64
// clients write the same keys, spread over 16 prefixes, into a keyspace left
// whole or cut at each prefix. Many ranges must not be slower than one. (The
// keys matter: 16 interleaved sequences make Pebble flush overlapping files,
// which costs more than one sequence whatever the range count.)
func BenchmarkPut64ClientsRanges(b *testing.B) {
	for _, ranges := range []int{1, 16} {
		b.Run(fmt.Sprintf("ranges=%d", ranges), func(b *testing.B) { benchmarkPutRanges(b, ranges) })
	}
}

func benchmarkPutRanges(b *testing.B, ranges int) {
	c := testcluster.Start(b, 1)
	for i := 1; i < ranges; i++ {
		splitAt(b, c, c.Nodes[0], fmt.Sprintf("bench/%02d", i))
	}
	conns := make([]*clientv3.Client, 10)
	for i := range conns {
		conns[i] = c.Client()
	}
	ctx := context.Background()
	// Let the new ranges elect their leaders before the clock starts.
	for i := range 16 {
		if _, err := conns[0].Put(ctx, fmt.Sprintf("bench/%02d/warmup", i), benchValue); err != nil {
			b.Fatal(err)
		}
	}
	var seq atomic.Int64
	b.SetParallelism(32)
	defer reportCPU(b)()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		cli := conns[int(seq.Add(1))%len(conns)]
		for pb.Next() {
			n := seq.Add(1)
			if _, err := cli.Put(ctx, fmt.Sprintf("bench/%02d/%012d", n%16, n), benchValue); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
