package testcluster

import "go.uber.org/goleak"

// LeakOptions are the goroutines a test binary may leave behind after its
// clusters closed: Dragonboat and Pebble keep a few process-wide ones. Use
// with goleak.VerifyTestMain.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/lni/goutils/syncutil.(*Stopper).RunWorker.func1"),
		goleak.IgnoreTopFunction("github.com/cockroachdb/pebble/v2.(*tableCacheShard).releaseLoop"),
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("github.com/lni/dragonboat/v4/internal/transport.(*TCPTransport).Start.func1"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	}
}
