package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/wirecodec"
	"github.com/tesserakv/tessera/node"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/proto/v3electionpb"
	"github.com/tesserakv/tessera/proto/v3lockpb"
)

// Config is the node's configuration: etcd's flags are one flat set, and
// the few the server reads (client URLs, --max-request-bytes) are among
// them. The node validates it.
type Config = node.Config

// Member of the initial cluster.
type Member = node.Member

// TestingKnobs are the node's hooks for tests only (Config.Knobs).
type TestingKnobs = node.TestingKnobs

// DefaultConfig is a single node on 127.0.0.1:2379 with data in ./tessera.data.
func DefaultConfig() Config { return node.DefaultConfig() }

// grpcOverheadBytes is the room etcd leaves above --max-request-bytes for the
// gRPC envelope.
const grpcOverheadBytes = 512 * 1024

// streamWorkers is how many goroutines the gRPC server keeps for handling
// requests (more at once get new goroutines): requests then run on stacks
// that have already grown.
const streamWorkers = 64

// Server is a running node serving etcd's API on its client URLs.
type Server struct {
	node *node.Node
	log  *slog.Logger
	grpc *grpc.Server
	// peer serves the other nodes on the peer port: the Internal service
	// and the client calls they pass on (KV, Lease, Cluster; already
	// checked there).
	peer      *grpc.Server
	http      *http.Server // etcd's HTTP endpoints on the client URLs
	listeners []net.Listener
	// selfListener carries the self client's connections in memory.
	selfListener *bufconn.Listener
	// self is the client of this node the Election and Lock services use.
	self      *selfClient
	closeOnce sync.Once
}

// Start listens on the client URLs, starts the node and serves clients.
func Start(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	n, err := node.New(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{node: n, log: cfg.Logger}
	az := &authz{n: n, certCN: cfg.ClientTLS.ClientCertAuth}
	n.AuthorizeWatches(az.watchAllowed)
	cfg.ClientTLS = n.ClientTLS()
	var clientTLS *tls.Config
	if node.AnyHTTPS(cfg.ListenClientURLs) {
		// HTTP/1.1 first: clients offering both (curl, browsers) speak
		// HTTP/1.1 to the gateway, gRPC clients offer only h2.
		if clientTLS, err = cfg.ClientTLS.ServerConfig("http/1.1", "h2"); err != nil {
			return nil, fmt.Errorf("client TLS: %w", err)
		}
	}
	// Listen before starting the node so a taken port fails fast and
	// changes nothing.
	for _, u := range cfg.ListenClientURLs {
		ln, err := net.Listen("tcp", hostPort(u))
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("--listen-client-urls: %w", err)
		}
		if node.IsHTTPS(u) {
			ln = tls.NewListener(ln, clientTLS)
		}
		s.listeners = append(s.listeners, ln)
	}
	// Election and Lock reach this node's gRPC server in memory, whatever
	// the client URLs' schemes.
	s.selfListener = bufconn.Listen(1 << 20)
	if err := n.Start(); err != nil {
		s.closeListeners()
		return nil, err
	}

	metrics := newGRPCMetrics(n.Registerer())
	s.grpc = grpc.NewServer(append(serverOptions(cfg), grpc.Creds(terminatedTLS{}),
		// etcd's gRPC series; clients refused while a snapshot is restored;
		// every request checked against the auth state.
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if err := refusedWhileRestoring(n, info.FullMethod); err != nil {
				return nil, err
			}
			ctx, err := az.unary(ctx, req, info)
			if err != nil {
				return nil, err
			}
			return metrics.unary(ctx, req, info, handler)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			if err := refusedWhileRestoring(n, info.FullMethod); err != nil {
				return err
			}
			ss, err := az.stream(ss, info)
			if err != nil {
				return err
			}
			return metrics.stream(srv, ss, info, handler)
		}),
	)...)
	s.peer = grpc.NewServer(append(serverOptions(cfg),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			if err := refusedWhileRestoring(n, info.FullMethod); err != nil {
				return nil, err
			}
			return handler(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			if err := refusedWhileRestoring(n, info.FullMethod); err != nil {
				return err
			}
			return handler(srv, ss)
		}),
	)...)
	registerKV(s.peer, n.Router())
	pb.RegisterLeaseServer(s.peer, n.Router())
	tesserapb.RegisterInternalServer(s.peer, n.Internal())
	registerKV(s.grpc, n.Router())
	pb.RegisterLeaseServer(s.grpc, n.Router())
	maint, clus := &maintenance{n: n}, &cluster{n: n}
	pb.RegisterMaintenanceServer(s.grpc, maint)
	pb.RegisterClusterServer(s.grpc, clus)
	pb.RegisterClusterServer(s.peer, clus) // member changes pass on to the meta leader
	pb.RegisterWatchServer(s.grpc, n.Hub())
	authSvc := &authService{n: n, authz: az, cost: cfg.BcryptCost, ttl: cfg.AuthTokenTTL, header: func() *pb.ResponseHeader { return n.Router().Header(0) }}
	pb.RegisterAuthServer(s.grpc, authSvc)
	tesserapb.RegisterInternalServer(s.grpc, n.Internal())
	// gRPC's health service, SERVING, as etcd registers it; nodes time their
	// round trips to each other with it.
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, hs)
	healthpb.RegisterHealthServer(s.peer, hs)
	s.self = &selfClient{dial: s.selfListener.DialContext, authz: az}
	elect, lck := &election{c: s.self}, &lock{c: s.self}
	v3electionpb.RegisterElectionServer(s.grpc, elect)
	v3lockpb.RegisterLockServer(s.grpc, lck)
	mux := http.NewServeMux()
	n.HandleHTTP(mux)
	mux.HandleFunc("/version", serveVersion)
	handleGateway(mux, n, az, authSvc, maint, clus, elect, lck)
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	_ = n.Stopper().RunAsync(func() {
		if err := s.grpc.Serve(s.selfListener); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("in-memory listener stopped", "err", err)
		}
	})
	_ = n.Stopper().RunAsync(func() {
		if err := s.peer.Serve(n.PeerListener()); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("peer listener stopped serving gRPC", "err", err)
		}
	})
	for _, ln := range s.listeners {
		split := splitListen(ln, n.Stopper().RunAsync)
		_ = n.Stopper().RunAsync(split.serve)
		_ = n.Stopper().RunAsync(func() {
			if err := s.grpc.Serve(split.grpc); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				s.log.Error("client listener stopped", "addr", ln.Addr().String(), "err", err)
			}
		})
		_ = n.Stopper().RunAsync(func() {
			if err := s.http.Serve(split.http); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("client listener stopped serving HTTP", "addr", ln.Addr().String(), "err", err)
			}
		})
	}
	s.log.Info("tessera serving", "name", cfg.Name, "replica", n.ID(), "clients", cfg.ListenClientURLs, "data-dir", cfg.DataDir)
	return s, nil
}

// serverOptions are the options of both gRPC servers.
func serverOptions(cfg Config) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.MaxRequestBytes + grpcOverheadBytes),
		grpc.MaxSendMsgSize(math.MaxInt32),
		grpc.MaxConcurrentStreams(cmp.Or(cfg.MaxConcurrentStreams, math.MaxUint32)),
		// Requests run on long-lived goroutines whose stacks have already
		// grown, instead of a new goroutine growing its stack each time.
		grpc.NumStreamWorkers(streamWorkers),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// Watch events go out encoded once for all the watches they go to,
		// and Range answers without decoding the stored versions.
		grpc.ForceServerCodecV2(wirecodec.Codec{}),
	}
}

// errRestoring answers clients while the node restores a snapshot.
var errRestoring = status.Error(codes.Unavailable, node.ErrRestoring.Error())

// refusedWhileRestoring is errRestoring for a call (gRPC method or
// gateway path) a node restoring a snapshot does not answer.
func refusedWhileRestoring(n *node.Node, call string) error {
	if n.Restoring() && !servesWhileRestoring(call) {
		return errRestoring
	}
	return nil
}

// servesWhileRestoring reports whether a node restoring a snapshot
// answers a gRPC method or gateway path: the other nodes' calls, health
// checks, Status and MemberList.
func servesWhileRestoring(call string) bool {
	return strings.HasPrefix(call, "/tesserapb.Internal/") || strings.HasPrefix(call, "/grpc.health.v1.Health/") || answeredWhileRestoring[call]
}

var answeredWhileRestoring = map[string]bool{
	"/etcdserverpb.Maintenance/Status": true,
	"/etcdserverpb.Cluster/MemberList": true,
	"/v3/maintenance/status":           true,
	"/v3/cluster/member/list":          true,
}

// hostPort is host:port of a URL that Config.Validate accepted.
func hostPort(raw string) string {
	u, _ := url.Parse(raw)
	return u.Host
}

func (s *Server) closeListeners() {
	for _, ln := range s.listeners {
		_ = ln.Close()
	}
}

// SplitRange splits the range holding key at key (what `tessera ctl split`
// does through Internal.SplitRange).
func (s *Server) SplitRange(ctx context.Context, key string) error {
	return s.node.SplitRange(ctx, key)
}

// Testing returns the node's test-only surface.
func (s *Server) Testing() node.TestingNode { return s.node.Testing() }

// Close shuts the node down gracefully: clients first, then background tasks,
// Raft, and the store last.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.node.Quiesce()
		s.self.close()
		s.node.StopFronts() // ends the streams a graceful stop would wait for
		var stopped sync.WaitGroup
		for _, g := range []*grpc.Server{s.grpc, s.peer} {
			stopped.Add(1)
			go func() {
				defer stopped.Done()
				done := make(chan struct{})
				go func() {
					g.GracefulStop()
					close(done)
				}()
				select {
				case <-done:
				case <-time.After(3 * time.Second):
					g.Stop()
					<-done
				}
			}()
		}
		stopped.Wait()
		_ = s.http.Close()
		s.closeListeners()
		s.node.Close()
	})
}

// serveVersion answers etcd's /version.
func serveVersion(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(struct {
		Server  string `json:"etcdserver"`
		Cluster string `json:"etcdcluster"`
	}{APIVersion, "3.7.0"})
}
