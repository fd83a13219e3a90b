// Package tests drives running Tessera nodes through the real etcd client
// (clientv3 v3.7.3) and etcdctl, comparing answers with etcd's documented
// behaviour and exact error messages.
package tests

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tesserakv/tessera/internal/testcluster"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testcluster.LeakOptions()...)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
