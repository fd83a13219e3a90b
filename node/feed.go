package node

import (
	"context"
	"errors"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/router"
)

// defaultFeedCloseInterval is how often a range feed's closed revision is
// brought up to date when no events come.
const defaultFeedCloseInterval = 100 * time.Millisecond

// RangeFeed serves Internal.RangeFeed: a watch of this node's hub over the
// range's keys, with prev_kv, whose events and progress are passed on as
// the feed's events and closed revisions. The hub reads history first and
// then this node's replica's applied events, in revision order, and reports
// progress only once every event at or below it was sent.
func (i *internalService) RangeFeed(req *tesserapb.RangeFeedRequest, out tesserapb.Internal_RangeFeedServer) error {
	rng := i.s.rangeByID(req.RangeId)
	var start, end []byte
	ok := rng != nil
	if ok {
		start, end, ok = rng.Bounds()
	}
	if !ok {
		return status.Errorf(codes.FailedPrecondition, "tessera: range %d is not on this node", req.RangeId)
	}
	if len(req.StartKey) > 0 {
		// The keys the follower routes to the range: this node's hub covers
		// them whatever ranges hold them here now.
		if !router.SpansOverlap(start, end, req.StartKey, req.EndKey) {
			return status.Errorf(codes.FailedPrecondition, "tessera: range %d no longer holds any key of [%q, %q)", req.RangeId, req.StartKey, req.EndKey)
		}
		start, end = req.StartKey, req.EndKey
		if len(end) == 0 {
			end = nil
		}
	}
	if req.StartRevision < 0 {
		return status.Errorf(codes.InvalidArgument, "tessera: negative start revision %d", req.StartRevision)
	}
	if len(start) == 0 {
		start = []byte{0} // the smallest key
	}
	if end == nil {
		end = []byte{0} // etcd's "every key from start on"
	}
	interval := time.Duration(req.CloseIntervalMs) * time.Millisecond
	if interval <= 0 {
		interval = defaultFeedCloseInterval
	}
	fs := &feedStream{
		ServerStream: out, out: out, interval: interval,
		create: &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
			Key: start, RangeEnd: end, StartRevision: req.StartRevision, PrevKv: true,
		}}},
	}
	err := i.s.hub.Watch(fs)
	if errors.Is(err, errFeedEnded) {
		return nil
	}
	return err
}

// errFeedEnded ends the hub's watch once the feed said its last word.
var errFeedEnded = errors.New("range feed ended")

// feedStream stands in for a Watch stream between the hub and a range feed:
// it asks for one watch, then for progress every interval, and turns the
// hub's answers into feed responses.
type feedStream struct {
	grpc.ServerStream
	out      tesserapb.Internal_RangeFeedServer
	interval time.Duration
	create   *pb.WatchRequest // sent first, then nil
}

func (fs *feedStream) Context() context.Context { return fs.out.Context() }

func (fs *feedStream) Recv() (*pb.WatchRequest, error) {
	if c := fs.create; c != nil {
		fs.create = nil
		return c, nil
	}
	select {
	case <-fs.out.Context().Done():
		return nil, fs.out.Context().Err()
	case <-time.After(fs.interval):
		return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}, nil
	}
}

func (fs *feedStream) RecvMsg(m any) error {
	req, err := fs.Recv()
	if err != nil {
		return err
	}
	proto.Merge(m.(proto.Message), req)
	return nil
}

func (fs *feedStream) Send(resp *pb.WatchResponse) error { return fs.SendMsg(resp) }

// SendMsg passes a hub answer on: events with the revision they are
// complete to, progress as a closed revision, a compacted start as the
// feed's end. The answer to the create request says nothing yet.
func (fs *feedStream) SendMsg(m any) error {
	resp, ok := m.(*pb.WatchResponse)
	if !ok {
		// The hub's pre-encoded responses (watchhub.wireResponse).
		b, err := proto.Marshal(m.(proto.Message))
		if err != nil {
			return err
		}
		resp = &pb.WatchResponse{}
		if err := proto.Unmarshal(b, resp); err != nil {
			return err
		}
	}
	switch {
	case resp.Canceled && resp.CompactRevision > 0:
		if err := fs.out.Send(&tesserapb.RangeFeedResponse{CompactRevision: resp.CompactRevision}); err != nil {
			return err
		}
		return errFeedEnded
	case resp.Canceled:
		return status.Error(codes.FailedPrecondition, "tessera: range feed refused: "+resp.CancelReason)
	case resp.Created:
		return nil
	}
	events, err := encodeEvents(resp.Events)
	if err != nil {
		return err
	}
	return fs.out.Send(&tesserapb.RangeFeedResponse{ClosedRevision: resp.GetHeader().GetRevision(), Events: events})
}
