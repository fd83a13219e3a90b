package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestSpanningWriteKill9: three processes built with crash points
// (cmd/tessera/crashpoints.go). A write spanning two ranges is sent to one
// node, which kills itself with SIGKILL at one step of the protocol: after
// holding both ranges, after recording its commit, after one range applied
// the commit; or after holding them, and then the range leader settling the
// abandoned hold dies too, having the outcome from the record and not yet
// applied it. Afterwards, with the dead nodes started again, both keys hold
// the write's value or neither does (the write committed exactly when its
// commit was recorded), and a watch opened before the writes shows each
// committed write whole, in one response at one revision, and nothing of
// the others.
func TestSpanningWriteKill9(t *testing.T) {
	crashDir := t.TempDir()
	procs := newProcessCluster(t, 3, "--log-level", "info")
	for _, p := range procs {
		p.binary = "tessera-crashpoints"
		p.env = []string{"TESSERA_CRASH_DIR=" + crashDir}
		p.launch()
	}
	for _, p := range procs {
		p.waitReady()
	}
	// Each case waits for holds to time out and nodes to restart.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	clientOf := func(ps ...*process) *clientv3.Client {
		var eps []string
		for _, p := range ps {
			eps = append(eps, p.clientURL)
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	cli := clientOf(procs...)
	start, err := cli.Txn(ctx).Then(clientv3.OpPut("a", "0"), clientv3.OpPut("z", "0")).Commit()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runBinary(t, "tessera", "ctl", "--endpoints", procs[0].clientURL, "split", "m"); err != nil {
		t.Fatalf("ctl split m: %v", err)
	}
	watch := cli.Watch(ctx, "a", clientv3.WithRange("z\x00"), clientv3.WithRev(start.Header.Revision+1))

	cases := []struct {
		steps     []string
		committed bool
	}{
		{[]string{"held"}, false},
		{[]string{"recorded"}, true},
		{[]string{"committed"}, true},
		{[]string{"held", "resolve-aborted"}, false},
		{[]string{"recorded", "resolve-committed"}, true},
	}
	var committed []string // the values of the committed writes, in order
	for i, tc := range cases {
		name := strings.Join(tc.steps, "+")
		value := fmt.Sprint(i + 1)
		for _, step := range tc.steps {
			if err := os.WriteFile(filepath.Join(crashDir, step), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		coordinator := procs[i%len(procs)]
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := clientOf(coordinator).Txn(wctx).Then(clientv3.OpPut("a", value), clientv3.OpPut("z", value)).Commit()
		cancel()
		if err == nil {
			t.Fatalf("%s: the write was acknowledged by a coordinator that died before answering", name)
		}
		// Every armed step fires, and kills one node.
		deadline := time.Now().Add(30 * time.Second)
		for {
			entries, err := os.ReadDir(crashDir)
			if err != nil {
				t.Fatal(err)
			}
			var dead []*process
			for _, p := range procs {
				if !p.running() {
					dead = append(dead, p)
				}
			}
			if len(entries) == 0 && len(dead) == len(tc.steps) {
				for _, p := range dead {
					p.start()
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: steps not reached %v, nodes dead %d", name, entries, len(dead))
			}
			time.Sleep(50 * time.Millisecond)
		}
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		get, err := cli.Get(rctx, "a", clientv3.WithRange("z\x00"))
		rcancel()
		if err != nil {
			out, _ := runBinary(t, "tessera", "ctl", "--endpoints", procs[0].clientURL, "ranges", "--json")
			t.Fatalf("%s: read: %v; ranges: %s", name, err, out)
		}
		want := "0"
		if len(committed) > 0 {
			want = committed[len(committed)-1]
		}
		if tc.committed {
			want = value
			committed = append(committed, value)
		}
		if len(get.Kvs) != 2 || string(get.Kvs[0].Value) != want || string(get.Kvs[1].Value) != want ||
			get.Kvs[0].ModRevision != get.Kvs[1].ModRevision {
			t.Fatalf("%s: read %v, want a and z at %q, at one revision", name, get.Kvs, want)
		}
	}

	// The watch shows each committed write whole, in one response.
	var seen []string
	deadline := time.After(30 * time.Second)
	for len(seen) < len(committed) {
		select {
		case resp := <-watch:
			if err := resp.Err(); err != nil {
				t.Fatal(err)
			}
			evs := resp.Events
			if len(evs) == 0 {
				continue
			}
			if len(evs) != 2 || evs[0].Type != mvccpb.PUT || string(evs[0].Kv.Key) != "a" || string(evs[1].Kv.Key) != "z" ||
				string(evs[0].Kv.Value) != string(evs[1].Kv.Value) || evs[0].Kv.ModRevision != evs[1].Kv.ModRevision {
				t.Fatalf("watch response %v, want a and z put at one revision", evs)
			}
			seen = append(seen, string(evs[0].Kv.Value))
		case <-deadline:
			t.Fatalf("the watch showed writes %v, want %v", seen, committed)
		}
	}
	if !slices.Equal(seen, committed) {
		t.Fatalf("the watch showed writes %v, want %v", seen, committed)
	}
}
