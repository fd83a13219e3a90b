package tests

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/internal/testcluster"
)

func TestLeaseLifecycle(t *testing.T) {
	c := testcluster.Start(t, 1)
	cli := c.Client()
	ctx := ctxT(t)

	grant, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if grant.ID <= 0 || grant.TTL != 60 {
		t.Fatalf("grant = %+v", grant)
	}
	if _, err := cli.Put(ctx, "l/1", "v", clientv3.WithLease(grant.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "l/2", "v", clientv3.WithLease(grant.ID)); err != nil {
		t.Fatal(err)
	}
	ttl, err := cli.TimeToLive(ctx, grant.ID, clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatal(err)
	}
	if ttl.GrantedTTL != 60 || ttl.TTL <= 0 || ttl.TTL > 60 || len(ttl.Keys) != 2 {
		t.Fatalf("time to live = %+v", ttl)
	}
	leases, err := cli.Leases(ctx)
	if err != nil || len(leases.Leases) != 1 || leases.Leases[0].ID != grant.ID {
		t.Fatalf("leases = %+v %v", leases, err)
	}
	ka, err := cli.KeepAliveOnce(ctx, grant.ID)
	if err != nil || ka.TTL != 60 {
		t.Fatalf("keep alive once = %+v %v", ka, err)
	}
	if _, err := cli.Revoke(ctx, grant.ID); err != nil {
		t.Fatal(err)
	}
	get, err := cli.Get(ctx, "l/", clientv3.WithPrefix())
	if err != nil || len(get.Kvs) != 0 {
		t.Fatalf("keys of a revoked lease remain: %v %v", get.Kvs, err)
	}
	_, err = cli.Revoke(ctx, grant.ID)
	errIs(t, err, rpctypes.ErrGRPCLeaseNotFound)
	gone, err := cli.TimeToLive(ctx, grant.ID)
	if err != nil || gone.TTL != -1 {
		t.Fatalf("time to live of a revoked lease = %+v %v (want TTL -1)", gone, err)
	}
	_, err = cli.KeepAliveOnce(ctx, grant.ID)
	errIs(t, err, rpctypes.ErrGRPCLeaseNotFound)

	// Client-chosen IDs; a taken ID is refused.
	raw := pb.NewLeaseClient(cli.ActiveConnection())
	chosen, err := raw.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 777, TTL: 30})
	if err != nil || chosen.ID != 777 {
		t.Fatalf("grant with a chosen ID: %+v %v", chosen, err)
	}
	_, err = raw.LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: 777, TTL: 30})
	errIs(t, err, rpctypes.ErrGRPCLeaseExist)
	_, err = cli.Grant(ctx, 9_000_000_001)
	errIs(t, err, rpctypes.ErrGRPCLeaseTTLTooLarge)
}

func TestLeaseExpiryDeletesKeys(t *testing.T) {
	c := testcluster.Start(t, 1)
	cli := c.Client()
	ctx := ctxT(t)
	grant, err := cli.Grant(ctx, 1) // raised to the minimum TTL
	if err != nil {
		t.Fatal(err)
	}
	if grant.TTL < 1 {
		t.Fatalf("granted TTL %d", grant.TTL)
	}
	if _, err := cli.Put(ctx, "exp", "v", clientv3.WithLease(grant.ID)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Duration(grant.TTL+10) * time.Second)
	for time.Now().Before(deadline) {
		get, err := cli.Get(ctx, "exp")
		if err != nil {
			t.Fatal(err)
		}
		if len(get.Kvs) == 0 {
			ttl, err := cli.TimeToLive(ctx, grant.ID)
			if err != nil || ttl.TTL != -1 {
				t.Fatalf("expired lease time to live = %+v %v", ttl, err)
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("key of an expired lease still present")
}

func TestLeaseKeepAliveStream(t *testing.T) {
	c := testcluster.Start(t, 1)
	cli := c.Client()
	ctx := ctxT(t)
	grant, err := cli.Grant(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "kept", "v", clientv3.WithLease(grant.ID)); err != nil {
		t.Fatal(err)
	}
	ch, err := cli.KeepAlive(ctx, grant.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Kept alive for well past its TTL, the key stays.
	end := time.Now().Add(4 * time.Second)
	for time.Now().Before(end) {
		select {
		case resp, ok := <-ch:
			if !ok {
				t.Fatal("keep-alive channel closed")
			}
			if resp.TTL <= 0 {
				t.Fatalf("keep-alive TTL %d", resp.TTL)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("no keep-alive response")
		}
	}
	get, err := cli.Get(ctx, "kept")
	if err != nil || len(get.Kvs) != 1 {
		t.Fatalf("kept-alive key: %v %v", get, err)
	}
}

// TestLeaseAttachRacesRevocation forces the race statemachine/lease.go
// guards against: a Put with a lease lands on a range that does not know the
// lease, so the router registers the range with the lease on the home range
// and attaches the lease to it; a test hook holds the attach after the
// registration while the lease is revoked everywhere. The attach must then be refused (the range's lease
// floor is above its proof), and the Put must fail with etcd's
// lease-not-found, leaving no key behind. A lease that is not revoked is
// attached once and its keys go with it.
func TestLeaseAttachRacesRevocation(t *testing.T) {
	var (
		revokeNext atomic.Int64 // the lease to revoke when its attach is proved
		proofs     atomic.Int64
		cli        *clientv3.Client
		ctx        = ctxT(t)
	)
	c := testcluster.Start(t, 1, func(cfg *serverConfig) {
		cfg.Knobs.AfterLeaseProof = func(leaseID, proof int64) {
			proofs.Add(1)
			if revokeNext.CompareAndSwap(leaseID, 0) {
				if _, err := cli.Revoke(ctx, clientv3.LeaseID(leaseID)); err != nil {
					t.Errorf("revoke during the attach: %v", err)
				}
			}
		}
	})
	cli = c.Client()
	splitAt(t, c, c.Nodes[0], "m")
	waitRanges(t, c, 2)

	// Not revoked: attached to the range of "z" once, revoked with its keys.
	kept := grantWithKeys(t, ctx, cli, 60, "a", "x", "z")
	if n := proofs.Load(); n != 1 {
		t.Errorf("the lease was registered %d times for three Puts in two ranges, want once (for the range without it)", n)
	}
	ttl, err := cli.TimeToLive(ctx, kept, clientv3.WithAttachedKeys())
	if err != nil || len(ttl.Keys) != 3 || ttl.GrantedTTL != 60 {
		t.Fatalf("time to live: granted %d keys %q, %v", ttl.GrantedTTL, ttl.Keys, err)
	}
	if _, err := cli.Revoke(ctx, kept); err != nil {
		t.Fatal(err)
	}
	if get, err := cli.Get(ctx, "", clientv3.WithFromKey()); err != nil || get.Count != 0 {
		t.Fatalf("keys of a revoked lease remain: %v %v", get, err)
	}

	// Revoked between the proof and the attach.
	doomed, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	revokeNext.Store(int64(doomed.ID))
	_, err = cli.Put(ctx, "y", "v", clientv3.WithLease(doomed.ID))
	if revokeNext.Load() != 0 {
		t.Fatal("the hook did not revoke the lease")
	}
	if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("put with a lease revoked while it was being attached: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	if get, err := cli.Get(ctx, "y"); err != nil || get.Count != 0 {
		t.Fatalf("a key attached to a revoked lease exists: %v %v", get, err)
	}
	if ttl, err := cli.TimeToLive(ctx, doomed.ID); err != nil || ttl.TTL != -1 {
		t.Fatalf("time to live of the revoked lease: %v %v", ttl, err)
	}
	// The range goes on attaching other leases.
	later, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "y", "v", clientv3.WithLease(later.ID)); err != nil {
		t.Fatalf("put with a new lease after the race: %v", err)
	}
}

// TestLeaseRevocationReachesSplitChildren: time-to-live and a revocation go to
// the ranges overlapping the spans the home range recorded for the lease (its
// own bounds at the grant, and each range's span given the lease since),
// which include the ranges split off those ranges after the keys were
// attached.
func TestLeaseRevocationReachesSplitChildren(t *testing.T) {
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	cli := c.Client()
	splitAt(t, c, c.Nodes[0], "m")
	splitAt(t, c, c.Nodes[0], "t")
	waitRanges(t, c, 3)
	lease := grantWithKeys(t, ctx, cli, 60, "e", "p")
	if _, err := cli.Put(ctx, "z", "no lease"); err != nil {
		t.Fatal(err)
	}
	// "e" moves to a child of the home range, "p" to a child of the range
	// that was given the lease.
	splitAt(t, c, c.Nodes[0], "d")
	splitAt(t, c, c.Nodes[0], "o")
	waitRanges(t, c, 5)
	ttl, err := cli.TimeToLive(ctx, lease, clientv3.WithAttachedKeys())
	if err != nil || fmt.Sprintf("%q", ttl.Keys) != `["e" "p"]` || ttl.GrantedTTL != 60 || ttl.TTL <= 0 {
		t.Fatalf("time to live after the splits: TTL %d granted %d keys %q, %v", ttl.TTL, ttl.GrantedTTL, ttl.Keys, err)
	}
	if _, err := cli.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	get, err := cli.Get(ctx, "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	if get.Count != 1 || string(get.Kvs[0].Key) != "z" {
		t.Fatalf("after the revocation: %d keys %v, want only z", get.Count, get.Kvs)
	}
}

// TestLeaseRevocationStoppedPartWay: a revocation that stops after marking
// the lease (a test hook fails it there, as a crash or a timeout would) has
// deleted nothing yet; the lease is no longer usable or renewable, and the
// home range's lease clock tries the revocation again, which deletes the
// lease's keys in every range.
func TestLeaseRevocationStoppedPartWay(t *testing.T) {
	var stopNext atomic.Int64
	c := testcluster.Start(t, 1, func(cfg *serverConfig) {
		cfg.Knobs.RevokeRetryAfter = time.Second
		cfg.Knobs.AfterLeaseMark = func(leaseID int64) error {
			if stopNext.CompareAndSwap(leaseID, 0) {
				return errors.New("test: revocation stopped after the mark")
			}
			return nil
		}
	})
	ctx := ctxT(t)
	cli := c.Client()
	splitAt(t, c, c.Nodes[0], "m")
	waitRanges(t, c, 2)
	lease := grantWithKeys(t, ctx, cli, 600, "a", "z")
	stopNext.Store(int64(lease))
	if _, err := cli.Revoke(ctx, lease); err == nil {
		t.Fatal("the revocation the hook stopped succeeded")
	}
	if get, err := cli.Get(ctx, "", clientv3.WithFromKey()); err != nil || get.Count != 2 {
		t.Fatalf("keys right after the stopped revocation: %v %v, want both", get, err)
	}
	if _, err := cli.Put(ctx, "b", "v", clientv3.WithLease(lease)); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("put with a lease being revoked: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	if ka, err := cli.KeepAliveOnce(ctx, lease); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("keep-alive of a lease being revoked: %v %v, want %v", ka, err, rpctypes.ErrLeaseNotFound)
	}
	waitNoKeys(t, ctx, cli, "the lease clock did not finish the revocation")
	if leases, err := cli.Leases(ctx); err != nil || len(leases.Leases) != 0 {
		t.Fatalf("leases after the retried revocation: %v %v", leases, err)
	}
}

// grantWithKeys grants a lease of ttl seconds and puts each key with it.
func grantWithKeys(t *testing.T, ctx context.Context, cli *clientv3.Client, ttl int64, keys ...string) clientv3.LeaseID {
	t.Helper()
	grant, err := cli.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if _, err := cli.Put(ctx, k, "v", clientv3.WithLease(grant.ID)); err != nil {
			t.Fatalf("put %s with a lease: %v", k, err)
		}
	}
	return grant.ID
}

// waitNoKeys waits, up to 15 s, until the keyspace holds no key; failing,
// it reports what it last read after why.
func waitNoKeys(t *testing.T, ctx context.Context, cli *clientv3.Client, why string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		get, err := cli.Get(ctx, "", clientv3.WithFromKey())
		if err == nil && get.Count == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v %v", why, get, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
