package server

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/tesserakv/tessera/proto/v3electionpb"
	"github.com/tesserakv/tessera/proto/v3lockpb"
)

// selfClient is a clientv3 client of this node, made on first use, through
// which the Election and Lock services run clientv3's concurrency package
// as etcd's do: their guarantees are the client's, over whatever ranges
// the election's or lock's keys fall in.
type selfClient struct {
	dial  func(context.Context) (net.Conn, error) // to the node's gRPC server
	authz *authz                                  // the inner calls carry the caller's identity
	once  sync.Once
	cli   *clientv3.Client
	err   error
}

// as returns ctx for the inner calls made for the caller ctx records.
func (c *selfClient) as(ctx context.Context) context.Context {
	if c.authz == nil {
		return ctx
	}
	return c.authz.forCaller(ctx)
}

func (c *selfClient) get() (*clientv3.Client, error) {
	c.once.Do(func() {
		c.cli, c.err = clientv3.New(clientv3.Config{Endpoints: []string{"self:1"}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return c.dial(ctx) })}})
	})
	return c.cli, c.err
}

func (c *selfClient) close() {
	c.once.Do(func() {}) // no client is made after this
	if c.cli != nil {
		_ = c.cli.Close()
	}
}

// session is a concurrency session on lease (0: a new lease of the
// package's default TTL) that keeps nothing alive: the caller does.
func (c *selfClient) session(ctx context.Context, lease int64) (*concurrency.Session, error) {
	cli, err := c.get()
	if err != nil {
		return nil, err
	}
	s, err := concurrency.NewSession(cli, concurrency.WithLease(clientv3.LeaseID(lease)), concurrency.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	s.Orphan()
	return s, nil
}

// errMissingLeaderKey is etcd's answer to Proclaim or Resign without a
// leader key.
var errMissingLeaderKey = errors.New(`"leader" field must be provided`)

// election serves etcd's Election service.
type election struct {
	v3electionpb.UnimplementedElectionServer
	c *selfClient
}

func electionHeader(h *pb.ResponseHeader) *v3electionpb.ResponseHeader {
	return &v3electionpb.ResponseHeader{ClusterId: h.GetClusterId(), MemberId: h.GetMemberId(), Revision: h.GetRevision(), RaftTerm: h.GetRaftTerm()}
}

func electionKV(kv *mvccpb.KeyValue) *v3electionpb.KeyValue {
	return &v3electionpb.KeyValue{Key: kv.Key, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Version: kv.Version, Value: kv.Value, Lease: kv.Lease}
}

func (e *election) Campaign(ctx context.Context, req *v3electionpb.CampaignRequest) (*v3electionpb.CampaignResponse, error) {
	ctx = e.c.as(ctx)
	s, err := e.c.session(ctx, req.Lease)
	if err != nil {
		return nil, err
	}
	el := concurrency.NewElection(s, string(req.Name))
	if err := el.Campaign(ctx, string(req.Value)); err != nil {
		return nil, err
	}
	return &v3electionpb.CampaignResponse{
		Header: electionHeader(el.Header()),
		Leader: &v3electionpb.LeaderKey{Name: req.Name, Key: []byte(el.Key()), Rev: el.Rev(), Lease: int64(s.Lease())},
	}, nil
}

// resumed is the election a leader key names, on its lease.
func (e *election) resumed(ctx context.Context, lk *v3electionpb.LeaderKey) (*concurrency.Election, error) {
	if lk == nil {
		return nil, errMissingLeaderKey
	}
	s, err := e.c.session(ctx, lk.Lease)
	if err != nil {
		return nil, err
	}
	return concurrency.ResumeElection(s, string(lk.Name), string(lk.Key), lk.Rev), nil
}

func (e *election) Proclaim(ctx context.Context, req *v3electionpb.ProclaimRequest) (*v3electionpb.ProclaimResponse, error) {
	ctx = e.c.as(ctx)
	el, err := e.resumed(ctx, req.Leader)
	if err != nil {
		return nil, err
	}
	if err := el.Proclaim(ctx, string(req.Value)); err != nil {
		return nil, err
	}
	return &v3electionpb.ProclaimResponse{Header: electionHeader(el.Header())}, nil
}

func (e *election) Resign(ctx context.Context, req *v3electionpb.ResignRequest) (*v3electionpb.ResignResponse, error) {
	ctx = e.c.as(ctx)
	el, err := e.resumed(ctx, req.Leader)
	if err != nil {
		return nil, err
	}
	if err := el.Resign(ctx); err != nil {
		return nil, err
	}
	return &v3electionpb.ResignResponse{Header: electionHeader(el.Header())}, nil
}

// observer is an election for reading its leader: its session's lease
// (-1) is never used for a key.
func (e *election) observer(ctx context.Context, name []byte) (*concurrency.Election, error) {
	s, err := e.c.session(ctx, -1)
	if err != nil {
		return nil, err
	}
	return concurrency.NewElection(s, string(name)), nil
}

func (e *election) Leader(ctx context.Context, req *v3electionpb.LeaderRequest) (*v3electionpb.LeaderResponse, error) {
	ctx = e.c.as(ctx)
	el, err := e.observer(ctx, req.Name)
	if err != nil {
		return nil, err
	}
	resp, err := el.Leader(ctx)
	if err != nil {
		return nil, err
	}
	return &v3electionpb.LeaderResponse{Header: electionHeader(resp.Header), Kv: electionKV(resp.Kvs[0])}, nil
}

func (e *election) Observe(req *v3electionpb.LeaderRequest, stream v3electionpb.Election_ObserveServer) error {
	ctx := e.c.as(stream.Context())
	el, err := e.observer(ctx, req.Name)
	if err != nil {
		return err
	}
	ch := el.Observe(ctx)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case resp, ok := <-ch:
			if !ok {
				return ctx.Err()
			}
			if err := stream.Send(&v3electionpb.LeaderResponse{Header: electionHeader(resp.Header), Kv: electionKV(resp.Kvs[0])}); err != nil {
				return err
			}
		}
	}
}

// lock serves etcd's Lock service.
type lock struct {
	v3lockpb.UnimplementedLockServer
	c *selfClient
}

func lockHeader(h *pb.ResponseHeader) *v3lockpb.ResponseHeader {
	return &v3lockpb.ResponseHeader{ClusterId: h.GetClusterId(), MemberId: h.GetMemberId(), Revision: h.GetRevision(), RaftTerm: h.GetRaftTerm()}
}

func (l *lock) Lock(ctx context.Context, req *v3lockpb.LockRequest) (*v3lockpb.LockResponse, error) {
	ctx = l.c.as(ctx)
	s, err := l.c.session(ctx, req.Lease)
	if err != nil {
		return nil, err
	}
	m := concurrency.NewMutex(s, string(req.Name))
	if err := m.Lock(ctx); err != nil {
		return nil, err
	}
	return &v3lockpb.LockResponse{Header: lockHeader(m.Header()), Key: []byte(m.Key())}, nil
}

func (l *lock) Unlock(ctx context.Context, req *v3lockpb.UnlockRequest) (*v3lockpb.UnlockResponse, error) {
	ctx = l.c.as(ctx)
	cli, err := l.c.get()
	if err != nil {
		return nil, err
	}
	resp, err := cli.Delete(ctx, string(req.Key))
	if err != nil {
		return nil, err
	}
	return &v3lockpb.UnlockResponse{Header: lockHeader(resp.Header)}, nil
}
