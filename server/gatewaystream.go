package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/internal/wirecodec"
	"github.com/tesserakv/tessera/proto/v3electionpb"
)

// The gateway's streaming calls, as etcd's gRPC gateway serves them: the
// request body is the call's requests, JSON objects one after another
// (one for the server-streaming calls); each answer goes out at once as
// a line {"result": …}, and an error ends the stream with a line
// {"error": {"code": …, "message": …}}.

// gatewayStream is one streaming call over an HTTP request and its
// response.
type gatewayStream struct {
	ctx     context.Context
	w       http.ResponseWriter
	body    *json.Decoder
	newResp func() proto.Message // decodes responses sent already encoded
	mu      sync.Mutex           // serializes writes
	wrote   bool
}

var _ grpc.ServerStream = (*gatewayStream)(nil)

func (s *gatewayStream) Context() context.Context     { return s.ctx }
func (s *gatewayStream) SetHeader(metadata.MD) error  { return nil }
func (s *gatewayStream) SendHeader(metadata.MD) error { return nil }
func (s *gatewayStream) SetTrailer(metadata.MD)       {}

// SendMsg writes one answer as a line.
func (s *gatewayStream) SendMsg(m any) error {
	msg, ok := m.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "gateway: cannot send %T", m)
	}
	if wm, ok := m.(wirecodec.Message); ok {
		bufs := wm.WireBytes()
		msg = s.newResp()
		err := proto.Unmarshal(bufs.Materialize(), msg)
		bufs.Free()
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
	}
	out, err := gatewayOut.Marshal(msg)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	return s.writeLine("result", out)
}

func (s *gatewayStream) writeLine(field string, v []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.wrote {
		s.w.Header().Set("Content-Type", "application/json")
		s.wrote = true
	}
	var line bytes.Buffer
	line.WriteString(`{"` + field + `":`)
	line.Write(v)
	line.WriteString("}\n")
	if _, err := s.w.Write(line.Bytes()); err != nil {
		return err
	}
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
	return nil
}

// RecvMsg reads the next request of the body; io.EOF after the last.
func (s *gatewayStream) RecvMsg(m any) error {
	var raw json.RawMessage
	if err := s.body.Decode(&raw); err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		return status.Error(codes.InvalidArgument, err.Error())
	}
	msg, ok := m.(proto.Message)
	if !ok {
		return status.Errorf(codes.Internal, "gateway: cannot receive %T", m)
	}
	if err := gatewayIn.Unmarshal(raw, msg); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return nil
}

// end writes the error that ended the call, if any.
func (s *gatewayStream) end(err error) {
	if err == nil || s.ctx.Err() != nil {
		return
	}
	st := status.Convert(err)
	out, merr := json.Marshal(struct {
		Code    codes.Code `json:"code"`
		Message string     `json:"message"`
	}{st.Code(), st.Message()})
	if merr == nil {
		_ = s.writeLine("error", out)
	}
}

// streamCall serves a streaming call at a gateway path: POST only, the
// body limited as a unary call's.
func streamCall(newResp func() proto.Message, call func(*gatewayStream) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeGatewayError(w, status.Error(codes.Unimplemented, "Method Not Allowed"), http.StatusMethodNotAllowed)
			return
		}
		// Requests may follow answers, so the body stays readable after
		// the first write.
		_ = http.NewResponseController(w).EnableFullDuplex()
		s := &gatewayStream{ctx: r.Context(), w: w, body: json.NewDecoder(io.LimitReader(r.Body, gatewayMaxBody)), newResp: newResp}
		s.end(call(s))
	}
}

// firstRequest reads a server-streaming call's one request.
func firstRequest[Req proto.Message](s *gatewayStream, req Req) (Req, error) {
	if err := s.RecvMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return req, err
	}
	return req, nil
}

type gatewayWatch struct{ *gatewayStream }

func (s gatewayWatch) Send(m *pb.WatchResponse) error { return s.SendMsg(m) }
func (s gatewayWatch) Recv() (*pb.WatchRequest, error) {
	m := &pb.WatchRequest{}
	return m, s.RecvMsg(m)
}

type gatewayKeepAlive struct{ grpc.ServerStream }

func (s gatewayKeepAlive) Send(m *pb.LeaseKeepAliveResponse) error { return s.SendMsg(m) }
func (s gatewayKeepAlive) Recv() (*pb.LeaseKeepAliveRequest, error) {
	m := &pb.LeaseKeepAliveRequest{}
	return m, s.RecvMsg(m)
}

type gatewaySnapshot struct{ *gatewayStream }

func (s gatewaySnapshot) Send(m *pb.SnapshotResponse) error { return s.SendMsg(m) }

type gatewayObserve struct{ *gatewayStream }

func (s gatewayObserve) Send(m *v3electionpb.LeaderResponse) error { return s.SendMsg(m) }

// handleGatewayStreams adds the streaming calls' paths.
func handleGatewayStreams(handle func(http.HandlerFunc, ...string), az *authz, watch pb.WatchServer, lease pb.LeaseServer, m *maintenance, e *election) {
	handle(streamCall(func() proto.Message { return &pb.WatchResponse{} }, func(s *gatewayStream) error {
		return watch.Watch(gatewayWatch{s})
	}), "/v3/watch")
	handle(streamCall(func() proto.Message { return &pb.LeaseKeepAliveResponse{} }, func(s *gatewayStream) error {
		// Checked as the gRPC call is: each renewal against the lease's keys.
		ss, err := az.stream(s, &grpc.StreamServerInfo{FullMethod: "/etcdserverpb.Lease/LeaseKeepAlive", IsClientStream: true, IsServerStream: true})
		if err != nil {
			return err
		}
		return lease.LeaseKeepAlive(gatewayKeepAlive{ss})
	}), "/v3/lease/keepalive")
	handle(streamCall(func() proto.Message { return &pb.SnapshotResponse{} }, func(s *gatewayStream) error {
		req, err := firstRequest(s, &pb.SnapshotRequest{})
		if err != nil {
			return err
		}
		if s.ctx, err = az.check(s.ctx, req); err != nil {
			return err
		}
		return m.Snapshot(req, gatewaySnapshot{s})
	}), "/v3/maintenance/snapshot")
	handle(streamCall(func() proto.Message { return &v3electionpb.LeaderResponse{} }, func(s *gatewayStream) error {
		req, err := firstRequest(s, &v3electionpb.LeaderRequest{})
		if err != nil {
			return err
		}
		if s.ctx, err = az.check(s.ctx, req); err != nil {
			return err
		}
		return e.Observe(req, gatewayObserve{s})
	}), "/v3/election/observe")
}
