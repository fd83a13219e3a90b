package tests

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// The bank test (after Jepsen's): accounts whose keys lie in many ranges,
// concurrent transfers between random accounts as Txns spanning ranges,
// and reads of every account at one revision. Every read must sum to the
// total, and porcupine checks the history against a bank.

const (
	bankAccounts = 16
	bankInitial  = 100
)

// bankState is every account's balance.
type bankState [bankAccounts]int

// bankInput: a transfer of amount from account from to account to, if
// their balances still are the ones the client read; or a read of every
// account.
type bankInput struct {
	read             bool
	from, to, amount int
	fromWas, toWas   int
}

// bankOutput: what a read saw, whether a transfer's compares held, or that
// a transfer's outcome is unknown.
type bankOutput struct {
	balances bankState
	ok       bool
	unknown  bool
}

var bankModel = porcupine.Model{
	Init: func() interface{} {
		var s bankState
		for i := range s {
			s[i] = bankInitial
		}
		return s
	},
	Step: func(state, input, output interface{}) (bool, interface{}) {
		s, in, out := state.(bankState), input.(bankInput), output.(bankOutput)
		if in.read {
			return out.balances == s, s
		}
		holds := s[in.from] == in.fromWas && s[in.to] == in.toWas
		next := s
		next[in.from] -= in.amount
		next[in.to] += in.amount
		switch {
		case out.unknown && holds:
			return true, next
		case out.unknown:
			return true, s
		case out.ok != holds:
			return false, s
		case holds:
			return true, next
		}
		return true, s
	},
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(bankInput), output.(bankOutput)
		if in.read {
			return fmt.Sprintf("read -> %v", out.balances)
		}
		return fmt.Sprintf("transfer %d from %d (was %d) to %d (was %d) -> ok=%t unknown=%t", in.amount, in.from, in.fromWas, in.to, in.toWas, out.ok, out.unknown)
	},
}

func bankKey(i int) string { return fmt.Sprintf("bank/%02d", i) }

// TestBank: three nodes, sixteen accounts over eight ranges (ten by the end);
// four clients transfer between random accounts while two read every
// account, through every node, as ranges split and leaders (the meta
// range's among them) move. Every read sums to the total, reads at past
// revisions and serializable reads too, and porcupine accepts the history.
func TestBank(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	cli := c.Client()
	bankOpen(t, ctx, cli)
	for i := 2; i < bankAccounts; i += 2 {
		splitAt(t, c, c.Nodes[i%3], bankKey(i))
	}
	waitRanges(t, c, 8)
	runBank(t, func(i int) *clientv3.Client { return c.Client(c.Nodes[i%len(c.Nodes)].ClientURL) }, func(round int) {
		switch round {
		case 0:
			splitAt(t, c, c.Nodes[1], bankKey(1))
		case 1:
			_ = c.Nodes[0].Server.Testing().TransferLeadership(2)
		case 2:
			splitAt(t, c, c.Nodes[2], bankKey(9))
			_ = c.Nodes[0].Server.Testing().TransferMetaLeadership(3)
		}
	})
}

// TestBankKill9: the bank on three tessera processes, eight ranges, while
// one node is killed with SIGKILL and started again: writes spanning ranges
// that its death interrupts are settled by the ranges (committed whole or
// not at all); every read sums to the total and porcupine accepts the
// history.
func TestBankKill9(t *testing.T) {
	procs := startProcessCluster(t, 3)
	ctx := ctxT(t)
	cli := procs[0].client()
	defer cli.Close()
	bankOpen(t, ctx, cli)
	for i := 2; i < bankAccounts; i += 2 {
		if _, err := runBinary(t, "tessera", "ctl", "--endpoints", procs[0].clientURL, "split", bankKey(i)); err != nil {
			t.Fatalf("ctl split %s: %v", bankKey(i), err)
		}
	}
	var clients []*clientv3.Client
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
	})
	clientFor := func(i int) *clientv3.Client {
		var eps []string
		for j := range procs {
			eps = append(eps, procs[(i+j)%len(procs)].clientURL)
		}
		c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		return c
	}
	runBank(t, clientFor, func(round int) {
		switch round {
		case 0:
			procs[2].kill()
		case 2:
			procs[2].start()
		}
	})
}

// bankOpen writes every account's opening balance.
func bankOpen(t *testing.T, ctx context.Context, cli *clientv3.Client) {
	t.Helper()
	for i := range bankAccounts {
		if _, err := cli.Put(ctx, bankKey(i), strconv.Itoa(bankInitial)); err != nil {
			t.Fatal(err)
		}
	}
}

// runBank runs the bank's clients (client i from clientFor(i)) while
// disturb runs three rounds, then checks the history.
func runBank(t *testing.T, clientFor func(i int) *clientv3.Client, disturb func(round int)) {
	ctx := ctxT(t)
	cli := clientFor(0)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	start := time.Now()
	now := func() int64 { return time.Since(start).Nanoseconds() }
	var (
		mu        sync.Mutex
		history   []porcupine.Operation
		revisions []int64 // of reads that summed right
		wg        sync.WaitGroup
	)
	record := func(op porcupine.Operation) {
		mu.Lock()
		history = append(history, op)
		mu.Unlock()
	}
	readAll := func(ctx context.Context, cli *clientv3.Client, opts ...clientv3.OpOption) (bankState, int64, error) {
		var s bankState
		resp, err := cli.Get(ctx, "bank/", append([]clientv3.OpOption{clientv3.WithPrefix()}, opts...)...)
		if err != nil {
			return s, 0, err
		}
		if len(resp.Kvs) != bankAccounts {
			return s, 0, fmt.Errorf("read %d accounts at revision %d", len(resp.Kvs), resp.Header.Revision)
		}
		for i, kv := range resp.Kvs {
			if s[i], err = strconv.Atoi(string(kv.Value)); err != nil {
				return s, 0, err
			}
		}
		return s, resp.Header.Revision, nil
	}
	sum := func(s bankState) (total int) {
		for _, b := range s {
			total += b
		}
		return total
	}
	const transferers, transfers, readers, reads = 4, 30, 2, 30
	for id := range transferers {
		cli := clientFor(id)
		rng := rand.New(rand.NewSource(seed + int64(id)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range transfers {
				in := bankInput{from: rng.Intn(bankAccounts), to: rng.Intn(bankAccounts - 1), amount: 1 + rng.Intn(10)}
				if in.to >= in.from {
					in.to++
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var from, to *clientv3.GetResponse
				var err error
				if from, err = cli.Get(ctx, bankKey(in.from)); err == nil {
					to, err = cli.Get(ctx, bankKey(in.to))
				}
				if err != nil || len(from.Kvs) == 0 || len(to.Kvs) == 0 {
					cancel()
					continue
				}
				in.fromWas, _ = strconv.Atoi(string(from.Kvs[0].Value))
				in.toWas, _ = strconv.Atoi(string(to.Kvs[0].Value))
				call := now()
				resp, err := cli.Txn(ctx).
					If(clientv3.Compare(clientv3.Value(bankKey(in.from)), "=", strconv.Itoa(in.fromWas)),
						clientv3.Compare(clientv3.Value(bankKey(in.to)), "=", strconv.Itoa(in.toWas))).
					Then(clientv3.OpPut(bankKey(in.from), strconv.Itoa(in.fromWas-in.amount)),
						clientv3.OpPut(bankKey(in.to), strconv.Itoa(in.toWas+in.amount))).
					Commit()
				cancel()
				out, ret := bankOutput{}, now()
				if err != nil {
					out.unknown, ret = true, math.MaxInt64
				} else {
					out.ok = resp.Succeeded
				}
				record(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: ret})
			}
		}()
	}
	for id := range readers {
		cli := clientFor(id + 1)
		rng := rand.New(rand.NewSource(seed + 100 + int64(id)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range reads {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				call := now()
				s, rev, err := readAll(ctx, cli)
				ret := now()
				if err == nil {
					record(porcupine.Operation{ClientId: transferers + id, Input: bankInput{read: true}, Call: call, Output: bankOutput{balances: s}, Return: ret})
					if got := sum(s); got != bankAccounts*bankInitial {
						t.Errorf("read at revision %d sums to %d: %v", rev, got, s)
					}
					mu.Lock()
					revisions = append(revisions, rev)
					past := revisions[rng.Intn(len(revisions))]
					mu.Unlock()
					// A read at a past revision sums to the total too (one
					// that fails, while a node is down, says nothing).
					if s, _, err := readAll(ctx, cli, clientv3.WithRev(past)); err == nil && sum(s) != bankAccounts*bankInitial {
						t.Errorf("read at past revision %d sums to %d: %v", past, sum(s), s)
					}
					// So does a serializable read: each account's replica as
					// it is, but no transfer seen half done.
					if s, rev, err := readAll(ctx, cli, clientv3.WithSerializable()); err == nil && sum(s) != bankAccounts*bankInitial {
						t.Errorf("serializable read (revision %d) sums to %d: %v", rev, sum(s), s)
					}
				}
				cancel()
				time.Sleep(time.Duration(rng.Intn(20)) * time.Millisecond)
			}
		}()
	}
	for round := range 3 {
		time.Sleep(300 * time.Millisecond)
		disturb(round)
	}
	wg.Wait()

	s, _, err := readAll(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	if sum(s) != bankAccounts*bankInitial {
		t.Fatalf("the accounts end at %v, summing to %d", s, sum(s))
	}
	succeeded, unknown := 0, 0
	for _, op := range history {
		out := op.Output.(bankOutput)
		if !op.Input.(bankInput).read && out.ok {
			succeeded++
		}
		if out.unknown {
			unknown++
		}
	}
	if succeeded == 0 {
		t.Fatal("no transfer succeeded")
	}
	t.Logf("%d operations, %d transfers succeeded, %d of unknown outcome, final balances %v", len(history), succeeded, unknown, s)
	res, info := porcupine.CheckOperationsVerbose(bankModel, history, time.Minute)
	if res != porcupine.Ok {
		path := fmt.Sprintf("%s/bank-%d.html", t.TempDir(), seed)
		_ = porcupine.VisualizePath(bankModel, info, path)
		t.Fatalf("porcupine: %v (seed %d)", res, seed)
	}
}
