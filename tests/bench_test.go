package tests

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

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

// BenchmarkPut64Clients16Ranges is BenchmarkPut64Clients with the keyspace cut
// into 16 ranges and the keys spread over all of them: many ranges must not be
// slower than one.
func BenchmarkPut64Clients16Ranges(b *testing.B) {
	c := testcluster.Start(b, 1)
	for i := 1; i < 16; i++ {
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
