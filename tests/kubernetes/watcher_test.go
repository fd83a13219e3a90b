package kubernetes

// The etcd3 store's TestWatch from k8s.io/apiserver/pkg/storage/etcd3/watcher_test.go,
// which runs the watch conformance suite, with its subtests under the same
// names, each on a fresh Tessera node and under every configuration.
//
// Left out: storagetesting.RunTestOptionalWatchBookmarksWithCorrectResourceVersion,
// the one RunTest function the etcd3 store's tests do not run. Only the watch
// cache (k8s.io/apiserver/pkg/storage/cacher) runs it: it requires bookmark
// events for a watch that allows them, which the cacher sends and the etcd3
// store's watch never does (it makes bookmarks only of etcd progress
// notifications it asks for, which the API cannot request; upstream passes
// expectedWatchBookmarks=false to RunTestWatchDispatchBookmarkEvents for it).

import (
	"fmt"
	"testing"

	"k8s.io/apiserver/pkg/features"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
)

func TestWatch(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		t.Run("Watch", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunTestWatch(ctx, t, store)
		})
		t.Run("ClusterScopedWatch", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunTestClusterScopedWatch(ctx, t, store)
		})
		t.Run("NamespaceScopedWatch", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunTestNamespaceScopedWatch(ctx, t, store)
		})
		t.Run("DeleteTriggerWatch", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunTestDeleteTriggerWatch(ctx, t, store)
		})
		t.Run("WatchFromZero", func(t *testing.T) {
			ctx, store, client := testSetup(t)
			storagetesting.RunTestWatchFromZero(ctx, t, store, compactStorage(store, client.Client))
		})
		t.Run("WatchFromNonZero", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunTestWatchFromNonZero(ctx, t, store)
		})
		t.Run("DelayedWatchDelivery", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunTestDelayedWatchDelivery(ctx, t, store)
		})
		t.Run("WatchError", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunTestWatchError(ctx, t, store)
		})
		t.Run("WatchContextCancel", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunTestWatchContextCancel(ctx, t, store)
		})
		t.Run("WatcherTimeout", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunTestWatcherTimeout(ctx, t, store)
		})
		t.Run("WatchDeleteEventObjectHaveLatestRV", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunTestWatchDeleteEventObjectHaveLatestRV(ctx, t, store)
		})
		t.Run("WatchInitializationSignal", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunTestWatchInitializationSignal(ctx, t, store)
		})
		t.Run("ProgressNotify", func(t *testing.T) {
			ctx, store, client := testSetup(t, withProgressNotify())
			storagetesting.RunOptionalTestProgressNotify(ctx, t, store, increaseRVFunc(client.Client))
		})
		t.Run("WatchWithUnsafeDelete", func(t *testing.T) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
			ctx, store, _ := testSetup(t)
			storagetesting.RunTestWatchWithUnsafeDelete(ctx, t, &transformerOverride{Interface: store, transformer: store.transformer}, corruptObjectError(t))
		})
		t.Run("WatchDispatchBookmarkEvents", func(t *testing.T) {
			ctx, store, _ := testSetup(t, withProgressNotify())
			storagetesting.RunTestWatchDispatchBookmarkEvents(ctx, t, store, false)
		})
		t.Run("SendInitialEventsBackwardCompatibility", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunSendInitialEventsBackwardCompatibility(ctx, t, store)
		})
		// Upstream runs these under both settings of EtcdRangeStream; here
		// the configuration sets it.
		t.Run(fmt.Sprintf("RangeStream=%v", utilfeature.DefaultFeatureGate.Enabled(features.EtcdRangeStream)), func(t *testing.T) {
			t.Run("WatchSemantics", func(t *testing.T) {
				ctx, store, _ := testSetup(t)
				storagetesting.RunWatchSemantics(ctx, t, store)
			})
			t.Run("WatchSemanticsWithConcurrentDecode", func(t *testing.T) {
				featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ConcurrentWatchObjectDecode, true)
				ctx, store, _ := testSetup(t)
				storagetesting.RunWatchSemantics(ctx, t, store)
			})
			t.Run("WatchSemanticInitialEventsExtended", func(t *testing.T) {
				ctx, store, _ := testSetup(t)
				storagetesting.RunWatchSemanticInitialEventsExtended(ctx, t, store)
			})
			t.Run("WatchListMatchSingle", func(t *testing.T) {
				ctx, store, _ := testSetup(t)
				storagetesting.RunWatchListMatchSingle(ctx, t, store)
			})
		})
		t.Run("WatchErrorEventIsBlockingFurtherEvent", func(t *testing.T) {
			ctx, store, _ := testSetup(t)
			storagetesting.RunWatchErrorIsBlockingFurtherEvents(ctx, t, store)
		})
	})
}
