package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4"
	dbconfig "github.com/lni/dragonboat/v4/config"
	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/tesserakv/tessera/auth"
	"github.com/tesserakv/tessera/internal/stop"
	"github.com/tesserakv/tessera/meta"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/router"
	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
	"github.com/tesserakv/tessera/transport"
	"github.com/tesserakv/tessera/watchhub"
)

// firstRangeID is the Raft shard ID of the first data range, the one covering
// the whole keyspace in a new cluster (meta.RangeID is 1).
const firstRangeID = 2

// Node is a running node: its store, Raft, replicas and background tasks.
type Node struct {
	cfg       Config
	log       *slog.Logger
	replicaID uint64
	clusterID uint64

	store   *statemachine.Store
	nh      *dragonboat.NodeHost
	raftNet *transport.Factory // made nh's Raft transport (for Campaign)
	// peerConns are the peer port's gRPC connections (the other nodes'
	// calls), which the server serves (PeerListener).
	peerConns *transport.Others
	// peerServerTLS and peerClientTLS are the peer port's TLS, nil
	// without peer TLS.
	peerServerTLS, peerClientTLS *tls.Config
	meta                         *meta.Replica
	directory                    *meta.Directory
	// peerDirectory is directory once made, for the Raft transport's
	// resolver (resolvePeer), which may run before.
	peerDirectory atomic.Pointer[meta.Directory]
	// raftAddr is this node's Raft address; member is what its data
	// directory recorded at its first start, empty before (peeraddr.go).
	raftAddr  string
	member    memberRecord
	oracle    *meta.OracleClient
	allocator *meta.Allocator // hands out revisions while this node leads the meta range
	// events counts Raft leader changes; registry holds the node's
	// Prometheus metrics (prom.go).
	events   *raftEvents
	registry *prometheus.Registry
	// commitSeconds times the store's batch commits.
	commitSeconds prometheus.Histogram
	debug         debugMetrics

	// authState is the auth state as the meta replica last applied it;
	// authChanged is closed and replaced at every change (guarded by
	// authMu).
	authState   atomic.Pointer[auth.Snapshot]
	authMu      sync.Mutex
	authChanged chan struct{}
	// jwt mints and checks JWT tokens (--auth-token jwt,…); nil: simple.
	jwt *auth.JWT
	// watchAuth authorizes watches (AuthorizeWatches); set before Start.
	watchAuth func(ctx context.Context, key, rangeEnd []byte) error
	internal  *meta.InternalServer
	router    *router.Router
	hub       *watchhub.Hub

	// learners are the non-voting replicas failed additions left behind.
	learners abandonedLearners
	// placingSoon is set while a placement pass placeSoon started runs.
	placingSoon atomic.Bool
	// beatsSent counts heartbeats sent through another node (anotherNode).
	beatsSent atomic.Uint64
	// skipped holds the ranges the last descriptor sync found this node a
	// member of but not running (giveUpSkippedChildren). Only that task
	// touches it.
	skipped map[uint64]bool

	// picksMu guards picks: electNewRange's recent choices of a member
	// to lead a new range, by range ID (see leadershipCounts).
	picksMu sync.Mutex
	picks   map[uint64]pick

	// ranges are this node's data range replicas; cache indexes them by key
	// for the router.
	rangesMu sync.Mutex
	ranges   map[uint64]*shard.Replica // guarded by rangesMu
	cache    *router.RangeCache
	// raftMembers is every member of --initial-cluster's Raft address by node
	// ID: the meta range's voters (none on a node that joined).
	raftMembers map[uint64]dragonboat.Target
	// joined: this node starts from the identity its data directory
	// records (it joined a running cluster with --join, or its meta replica
	// was added again) rather than from --initial-cluster. Both guarded by
	// idMu once the node runs.
	idMu     sync.Mutex
	joined   bool
	identity identity
	// metaRestartMu serializes restarts of the meta replica (restartMeta).
	metaRestartMu sync.Mutex

	// spaceExceeded is true while the store is larger than --quota-backend-bytes.
	spaceExceeded atomic.Bool
	// restoring is true while the node waits for a snapshot's restore
	// (restore.go): it serves no client then.
	restoring atomic.Bool

	// stopper owns the node's background tasks: Close quiesces it, then
	// waits for them.
	stopper *stop.Stopper
	// feeds are the ranges held elsewhere that the watch hub follows.
	feeds feeds
	// live is the meta leader's memory of node heartbeats, and the
	// placement operations under way.
	live liveness
	// rangesChanged pokes runDescriptorSync (a split made a range here).
	rangesChanged chan struct{}
	closeOnce     sync.Once
}

// New checks the configuration and the data directory and settles the
// node's identity: its place in --initial-cluster, or the one it was given
// when it joined a running cluster (joining through --join the first time).
// The node holds nothing running until Start.
func New(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ClientTLS.AutoDir == "" {
		cfg.ClientTLS.AutoDir = filepath.Join(cfg.DataDir, "fixtures", "client")
	}
	if cfg.PeerTLS.AutoDir == "" {
		cfg.PeerTLS.AutoDir = filepath.Join(cfg.DataDir, "fixtures", "peer")
	}
	quietDragonboat(cfg.Logger)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("--data-dir %q: %w", cfg.DataDir, err)
	}
	if err := checkHostname(cfg.DataDir); err != nil {
		return nil, err
	}
	replicaID, _ := cfg.replicaID()
	cid := clusterID(cfg.InitialCluster)
	member, err := loadMember(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if member.ClusterID != 0 {
		cid = member.ClusterID
	}
	peerServerTLS, peerClientTLS, err := cfg.peerTLSConfigs()
	if err != nil {
		return nil, err
	}
	jwtTokens, err := auth.ParseAuthToken(cfg.AuthToken)
	if err != nil {
		return nil, fmt.Errorf("--auth-token: %w", err)
	}
	id, joined, err := nodeIdentity(cfg, peerClientTLS)
	if err != nil {
		return nil, err
	}
	if joined {
		replicaID, cid = id.NodeID, id.ClusterID
	}
	s := &Node{cfg: cfg, log: cfg.Logger, replicaID: replicaID, clusterID: cid, joined: joined, identity: id, stopper: stop.New(), rangesChanged: make(chan struct{}, 1), authChanged: make(chan struct{}),
		member: member, peerServerTLS: peerServerTLS, peerClientTLS: peerClientTLS, jwt: jwtTokens,
		ranges: map[uint64]*shard.Replica{}, feeds: feeds{wanted: map[uint64]time.Time{}}, picks: map[uint64]pick{}, cache: router.NewRangeCache()}
	s.newMetrics()
	return s, nil
}

// Start opens the node's storage, joins its Raft group(s), starts its
// replicas and background tasks. Its router and watch hub are ready to be
// served (see Router, Hub and Internal) when it returns. A node that failed
// to start has stopped.
func (s *Node) Start() error {
	cfg := s.cfg
	replicaID := s.replicaID
	var err error

	// The hub takes every range's applied events from the moment ranges
	// open; it reads through the store and the router once they exist.
	s.hub = watchhub.New(hubSource{s}, watchhub.Config{
		ProgressNotifyInterval: cfg.WatchProgressNotifyInterval,
		MaxRequestBytes:        cfg.MaxRequestBytes,
		Logger:                 s.log,
		Stopper:                s.stopper,
		Authorize:              s.authorizeWatch,
	})
	if s.store, err = statemachine.OpenStore(filepath.Join(cfg.DataDir, "kv"), statemachine.StoreOptions{OnSplit: s.onSplit, OnApply: s.hub.Publish, BeforeUpdate: cfg.Knobs.BeforeApply,
		OnCommit: func(d time.Duration) { s.commitSeconds.Observe(d.Seconds()) }}); err != nil {
		s.stopper.Stop()
		return fmt.Errorf("opening store in %s: %w", cfg.DataDir, err)
	}
	_ = os.RemoveAll(s.tmpDir()) // snapshots left by a node that stopped while sending them
	_, statErr := os.Stat(filepath.Join(cfg.DataDir, "raft"))
	newCluster := errors.Is(statErr, os.ErrNotExist)
	if err := s.startRaft(); err != nil {
		s.stopper.Stop()
		_ = s.store.Close()
		return err
	}

	s.meta = meta.NewReplica(s.nh, replicaID, s.metaReplicaID())
	s.directory = meta.NewDirectory(s.meta, cfg.nodeDialOptions(s.peerClientTLS)...)
	s.peerDirectory.Store(s.directory)
	s.allocator = meta.NewAllocator(s.meta, s.stopper, s.metaLease())
	allocator := s.allocator
	// The node's stopper stops its children the newest first: the replicas,
	// the router, the oracle client, then the Internal server's batcher.
	s.internal = meta.NewInternalServer(allocator, s.stopper)
	s.oracle = meta.NewOracleClient(s.meta, allocator, s.directory, s.stopper)
	s.router = router.New(router.Config{
		ClusterID:          s.clusterID,
		MemberID:           replicaID,
		MaxRequestBytes:    cfg.MaxRequestBytes,
		MaxTxnOps:          cfg.MaxTxnOps,
		MinLeaseTTLSeconds: minLeaseTTLSeconds(cfg),
		SpaceExceeded:      s.spaceExceeded.Load,
		TxnRecords:         s.meta,
		Logger:             s.log,
		Stopper:            s.stopper,
		Knobs:              cfg.Knobs.TestingKnobs,
	}, s.cache, s.directory, s.oracle)
	s.cache.SetDescriptors(s.routingDescriptors)
	if err := s.startRanges(); err != nil {
		s.Close()
		return err
	}

	s.goTask(s.registerNode)
	if newCluster && replicaID == 1 {
		// Every member of a new cluster starts with empty groups; member 1
		// gets the first elections over with (see hastenElection).
		s.goTask(func() { s.hastenElection(meta.RangeID, s.majorityListening) })
		s.goTask(func() { s.hastenElection(firstRangeID, s.majorityListening) })
	}
	if err := s.startMetrics(); err != nil {
		s.Close()
		return err
	}
	s.checkSpace()
	s.watchSpace()
	s.startHeartbeats()
	s.countLiveKeys()
	s.probePeers()
	s.goTask(s.runDescriptorSync)
	s.goTask(s.runHoldSweeper)
	// Splits, placement and compaction reshape ranges: a node restoring a
	// snapshot starts them once the restore is done.
	reshape := func() {
		s.startSplitter()
		s.startPlacement()
		if policy, _ := parseCompaction(cfg.AutoCompactionMode, cfg.AutoCompactionRetention); policy.enabled() {
			s.goTask(func() { s.runCompactor(policy) })
		}
	}
	id, err := s.preparedRestore()
	if err != nil {
		s.Close()
		return err
	}
	if id == nil && s.joined {
		// A node joining a cluster that is loading a snapshot waits for
		// the load like its members (restore.go).
		id = s.unfinishedRestore()
	}
	if id == nil {
		reshape()
		return nil
	}
	s.restoring.Store(true)
	s.goTask(func() {
		if s.restore(id) {
			s.restoring.Store(false)
			reshape()
		}
	})
	return nil
}

func (s *Node) startRaft() error {
	cfg := s.cfg
	raftAddr := s.advertisedPeer()
	if s.member.RaftAddress != "" {
		raftAddr = s.member.RaftAddress
	}
	s.raftAddr = raftAddr
	listenAddr, _ := hostPortOf(cfg.ListenPeerURLs[0])
	logDB := dbconfig.GetTinyMemLogDBConfig()
	logDB.Shards = cfg.LogDBShards
	rtt := uint64(cfg.HeartbeatInterval / time.Millisecond)
	nhc := dbconfig.NodeHostConfig{
		NodeHostDir:    filepath.Join(cfg.DataDir, "raft"),
		RTTMillisecond: rtt,
		RaftAddress:    raftAddr,
		ListenAddress:  listenAddr,
		Expert:         dbconfig.ExpertConfig{LogDB: logDB},
	}
	nhc.Expert.Engine = dbconfig.GetDefaultEngineConfig()
	nhc.Expert.Engine.ExecShards = cfg.RaftStepWorkers
	s.peerConns = transport.NewOthers()
	s.raftNet = &transport.Factory{Log: s.log, Dial: cfg.Knobs.DialNode, Resolve: s.resolvePeer, Others: s.peerConns, ServerTLS: s.peerServerTLS, ClientTLS: s.peerClientTLS}
	nhc.Expert.TransportFactory = s.raftNet
	nhc.RaftEventListener = s.events
	// Dragonboat's own series (elections, dropped proposals and reads,
	// rejected replication, leader and term per replica) count events,
	// not proposals; /metrics serves them beside the node's (prom.go).
	nhc.EnableMetrics = true
	tuneDragonboat()
	nh, err := dragonboat.NewNodeHost(nhc)
	if err != nil && hardSettingsChanged(err) && cfg.RaftStepWorkers == DefaultRaftStepWorkers {
		// A data directory made with Dragonboat's default step worker count,
		// which Dragonboat records and insists on, keeps it.
		s.log.Info("data directory made with Dragonboat's default Raft step workers; keeping them", "workers", legacyRaftStepWorkers)
		nhc.Expert.Engine.ExecShards = legacyRaftStepWorkers
		nh, err = dragonboat.NewNodeHost(nhc)
	}
	if err != nil {
		return explainNodeHostError(err, cfg)
	}
	if s.member.RaftAddress == "" {
		if err := saveMember(cfg.DataDir, memberRecord{RaftAddress: raftAddr, ClusterID: s.clusterID}); err != nil {
			nh.Close()
			return fmt.Errorf("recording this node's Raft address in %s: %w", cfg.DataDir, err)
		}
	}
	s.nh = nh
	s.raftMembers = map[uint64]dragonboat.Target{}
	metaID := s.metaReplicaID()
	metaConfig := s.raftConfig(meta.RangeID, metaID)
	metaMembers, metaJoin := s.raftMembers, false
	if s.joined {
		// A node that joined holds a replica of the meta range, started
		// empty the first time (the meta leader added it as a non-voter),
		// and a voter once the meta leader made it one.
		metaConfig.IsNonVoting = !s.identity.MetaVoter
		metaMembers, metaJoin = nil, !nh.HasNodeInfo(meta.RangeID, metaID)
	} else {
		for i, m := range cfg.InitialCluster {
			addr, _ := hostPortOf(m.PeerURL)
			s.raftMembers[uint64(i+1)] = addr
		}
	}
	if nh.HasNodeInfo(meta.RangeID, metaID) {
		// Restarting: Dragonboat has the members it started with and
		// refuses others (a changed --initial-cluster, which etcd too
		// ignores once a member has data).
		metaMembers = nil
		// This replica may have answered the meta leader lately: it stays
		// out of elections for the leader's lease (see metaLease).
		time.Sleep(s.metaLease())
	}
	if err := nh.StartReplica(metaMembers, metaJoin, meta.StateMachineWithAuth(s.setAuth), metaConfig); err != nil {
		nh.Close()
		return fmt.Errorf("starting the meta range: %w", err)
	}
	return nil
}

// metaLease is how long a leadership confirmation of the meta leader covers
// the revision batches reserved after it began (meta.Allocator): one
// heartbeat interval. A meta voter that answered the confirmation drops vote
// requests until an election timeout passes without a word from the leader
// (Dragonboat, with CheckQuorum), at least two heartbeat intervals on any
// node sharing this --heartbeat-interval (an election timeout is at least
// three); a voter that restarts sits the lease out before its replica
// starts; membership changes and leadership transfers of the meta range end
// the lease first.
func (s *Node) metaLease() time.Duration { return s.cfg.HeartbeatInterval }

// metaReplicaID is this node's replica ID in the meta range as it starts.
func (s *Node) metaReplicaID() uint64 {
	if s.joined {
		return s.identity.metaReplicaID()
	}
	return s.replicaID
}

// explainNodeHostError names the cause when Dragonboat refuses a data
// directory made with other settings (its errors live in an internal package,
// so they are recognised by text).
func explainNodeHostError(err error, cfg Config) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "not the owner of the data directory"):
		return fmt.Errorf("data in %s belongs to another peer address than %v and does not record it (%s): start the node once with its first --initial-advertise-peer-urls, then move it with etcdctl member update: %w", cfg.DataDir, cfg.InitialAdvertisePeerURLs, memberFile, err)
	case hardSettingsChanged(err):
		return fmt.Errorf("data in %s was made with other --raft-step-workers or --raft-logdb-shards (they cannot change once data exists): %w", cfg.DataDir, err)
	case strings.Contains(msg, "failed to lock data directory"):
		return fmt.Errorf("--data-dir %s is in use by another running process: %w", cfg.DataDir, err)
	default:
		return fmt.Errorf("starting Raft in %s: %w", cfg.DataDir, err)
	}
}

// legacyRaftStepWorkers is Dragonboat's default step worker count, which a
// data directory made with it keeps.
const legacyRaftStepWorkers = 16

// hardSettingsChanged reports Dragonboat's refusal of a data directory made
// with another step worker or LogDB shard count.
func hardSettingsChanged(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "hard setting changed") || strings.Contains(msg, "hard.go settings changed")
}

// hostFile records the host name a data directory was created on. Dragonboat
// keeps its Raft log under a directory named after the host, so on a renamed
// host it would silently find no log; this file turns that into a clear error.
const hostFile = "hostname"

func checkHostname(dataDir string) error {
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("reading host name: %w", err)
	}
	path := filepath.Join(dataDir, hostFile)
	recorded, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return os.WriteFile(path, []byte(host+"\n"), 0o600)
	case err != nil:
		return err
	}
	if was := strings.TrimSpace(string(recorded)); was != host {
		return fmt.Errorf("data in %s was created on host %q but this host is %q; the Raft log is kept under the host name, so start Tessera on a host named %q (or move the data to a new member)", dataDir, was, host, was)
	}
	return nil
}

// minLeaseTTLSeconds is etcd's minimum lease TTL: 1.5 election timeouts, rounded up.
func minLeaseTTLSeconds(cfg Config) int64 {
	min := 3 * cfg.ElectionTimeout / 2
	return int64((min + time.Second - 1) / time.Second)
}

// clusterID derives a stable cluster ID from the initial cluster.
func clusterID(members []Member) uint64 {
	h := fnv.New64a()
	for _, m := range members {
		fmt.Fprintf(h, "%s=%s,", m.Name, m.PeerURL)
	}
	return h.Sum64() >> 1
}

// goTask runs fn as a task of the node's stopper; once Close has begun it
// starts nothing.
func (s *Node) goTask(fn func()) { _ = s.stopper.RunAsync(fn) }

// SplitRange splits the range holding key at key (what `tessera ctl split`
// does through Internal.SplitRange).
func (s *Node) SplitRange(ctx context.Context, key string) error {
	_, err := s.Internal().SplitRange(ctx, &tesserapb.SplitRangeRequest{SplitKey: []byte(key)})
	return err
}

// leadsHomeRange reports whether this node leads the first data range.
func (s *Node) leadsHomeRange() bool {
	home := s.rangeByID(firstRangeID)
	return home != nil && home.IsLeader()
}

// registerNode records this node's addresses in the meta range's node
// registry (like etcd's member attribute publish), retrying until it lands.
func (s *Node) registerNode() {
	ctx := s.stopper.Context()
	if err := s.directory.Register(ctx, s.nodeInfo()); err != nil && ctx.Err() == nil {
		s.log.Warn("registering this node in the meta range failed", "err", err)
	}
}

func (s *Node) runCompactor(policy compactionPolicy) {
	c := &compactor{policy: policy}
	tick := time.NewTicker(policy.interval())
	defer tick.Stop()
	for {
		select {
		case <-s.stopper.ShouldQuiesce():
			return
		case now := <-tick.C:
			if !s.leadsHomeRange() {
				continue
			}
			ctx, cancel := s.stopper.WithTimeout(10 * time.Second)
			current, err := s.oracle.Current(ctx)
			if err == nil {
				if target := c.observe(now, current); target > 0 {
					if _, err := s.router.Compact(ctx, &pb.CompactionRequest{Revision: target}); err != nil {
						s.log.Warn("auto-compaction failed", "revision", target, "err", err)
					} else {
						s.log.Info("auto-compacted", "revision", target)
					}
				}
			}
			cancel()
		}
	}
}

// checkSpace compares the store's size with --quota-backend-bytes.
func (s *Node) checkSpace() {
	exceeded := s.store.DiskSizeBytes() > s.cfg.QuotaBackendBytes
	if exceeded && !s.spaceExceeded.Load() {
		s.log.Warn("backend quota exceeded; refusing writes that add data", "quota-backend-bytes", s.cfg.QuotaBackendBytes)
	}
	s.spaceExceeded.Store(exceeded)
}

// watchSpace checks the store's size against the quota every second.
func (s *Node) watchSpace() {
	_ = s.stopper.Every(time.Second, func(time.Time) { s.checkSpace() })
}

// Quiesce begins the node's stop: its background tasks wind down and no new
// one starts. The replicas keep serving until Close.
func (s *Node) Quiesce() { s.stopper.Quiesce() }

// StopFronts stops the watch hub and the router: it ends the watch streams
// and the streams of writes other nodes forward here, which a graceful stop
// of the gRPC server would otherwise wait for.
func (s *Node) StopFronts() {
	s.hub.Stop()
	s.router.Stop()
}

// Close stops the node: its stopper stops the background tasks, then the
// replicas, the router, the oracle's batchers and the watch hub (its
// children, the newest first); then Raft, and the store last. The services
// on it (Router, Hub, Internal) must no longer be served: Quiesce and
// StopFronts come first, then the gRPC server's stop.
func (s *Node) Close() {
	s.closeOnce.Do(func() {
		s.stopper.Stop()
		s.directory.Close()
		_ = s.peerConns.Close() // connections still arriving are closed
		s.nh.Close()
		if err := s.store.Close(); err != nil {
			s.log.Warn("closing store", "err", err)
		}
	})
}
