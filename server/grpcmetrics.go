package server

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// grpcMetrics are the gRPC server series etcd exports (go-grpc-prometheus's
// names and labels): calls started and handled by service, method and
// code, messages received and sent on streams, and how long unary calls
// took. Each method's series are looked up once and kept, so a call costs
// a map lookup and a few atomic adds.
type grpcMetrics struct {
	started, handled, received, sent *prometheus.CounterVec
	handling                         *prometheus.HistogramVec
	methods                          sync.Map // full method name -> *methodMetrics
}

// methodMetrics are one method's series.
type methodMetrics struct {
	labels         [3]string // type, service, method
	started        prometheus.Counter
	received, sent prometheus.Counter
	handling       prometheus.Observer
	handled        sync.Map // codes.Code -> prometheus.Counter
}

func newGRPCMetrics(reg prometheus.Registerer) *grpcMetrics {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	m := &grpcMetrics{
		started:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "grpc_server_started_total", Help: "RPCs started on the server."}, labels),
		handled:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "grpc_server_handled_total", Help: "RPCs completed on the server, whatever their outcome."}, append(labels, "grpc_code")),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "grpc_server_msg_received_total", Help: "Stream messages received on the server."}, labels),
		sent:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "grpc_server_msg_sent_total", Help: "Stream messages sent by the server."}, labels),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "grpc_server_handling_seconds", Help: "How long unary RPCs took on the server.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}, labels),
	}
	reg.MustRegister(m.started, m.handled, m.received, m.sent, m.handling)
	return m
}

func (m *grpcMetrics) method(fullMethod, typ string) *methodMetrics {
	if mm, ok := m.methods.Load(fullMethod); ok {
		return mm.(*methodMetrics)
	}
	service, method := "unknown", "unknown"
	if i := strings.LastIndexByte(fullMethod, '/'); i > 0 {
		service, method = strings.TrimPrefix(fullMethod[:i], "/"), fullMethod[i+1:]
	}
	mm := &methodMetrics{labels: [3]string{typ, service, method}}
	mm.started = m.started.WithLabelValues(mm.labels[:]...)
	mm.received = m.received.WithLabelValues(mm.labels[:]...)
	mm.sent = m.sent.WithLabelValues(mm.labels[:]...)
	mm.handling = m.handling.WithLabelValues(mm.labels[:]...)
	actual, _ := m.methods.LoadOrStore(fullMethod, mm)
	return actual.(*methodMetrics)
}

// done counts a call of mm's method handled with err.
func (m *grpcMetrics) done(mm *methodMetrics, err error) {
	code := status.Code(err)
	c, ok := mm.handled.Load(code)
	if !ok {
		c, _ = mm.handled.LoadOrStore(code, m.handled.WithLabelValues(mm.labels[0], mm.labels[1], mm.labels[2], code.String()))
	}
	c.(prometheus.Counter).Inc()
}

// unary counts a unary call around handler.
func (m *grpcMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	mm := m.method(info.FullMethod, "unary")
	mm.started.Inc()
	mm.received.Inc()
	start := time.Now()
	resp, err := handler(ctx, req)
	mm.handling.Observe(time.Since(start).Seconds())
	if err == nil {
		mm.sent.Inc()
	}
	m.done(mm, err)
	return resp, err
}

// stream counts a streaming call and its messages around handler.
func (m *grpcMetrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	typ := "bidi_stream"
	switch {
	case info.IsClientStream && !info.IsServerStream:
		typ = "client_stream"
	case !info.IsClientStream && info.IsServerStream:
		typ = "server_stream"
	}
	mm := m.method(info.FullMethod, typ)
	mm.started.Inc()
	err := handler(srv, &countedStream{ServerStream: ss, mm: mm})
	m.done(mm, err)
	return err
}

// countedStream counts a stream's messages.
type countedStream struct {
	grpc.ServerStream
	mm *methodMetrics
}

func (s *countedStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if err == nil {
		s.mm.sent.Inc()
	}
	return err
}

func (s *countedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.mm.received.Inc()
	}
	return err
}
