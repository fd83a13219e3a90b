// Package tests drives running Tessera nodes through the real etcd client
// (clientv3 v3.7.3) and etcdctl, comparing answers with etcd's documented
// behaviour and exact error messages.
package tests

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Dragonboat and Pebble keep a few process-wide goroutines.
		goleak.IgnoreAnyFunction("github.com/lni/goutils/syncutil.(*Stopper).RunWorker.func1"),
		goleak.IgnoreTopFunction("github.com/cockroachdb/pebble/v2.(*tableCacheShard).releaseLoop"),
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/lni/dragonboat/v4/internal/transport.(*TCPTransport).Start.func1"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
