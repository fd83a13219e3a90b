package kubernetes

// Tests from k8s.io/apiserver/pkg/storage/etcd3/store_test.go that are not
// part of the shared conformance suite but check, through the store's
// exported API only, what the etcd3 store expects of the etcd server's reads.

import (
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/apis/example"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
)

// TestGetListStreamMultiChunk lists 25 pods, more than one RangeStream
// message holds (etcd cuts a stream's first message at 10 keys): latest,
// pinned to an exact revision after a later write, and not older than it.
func TestGetListStreamMultiChunk(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.EtcdRangeStream, true)
	resetFeatureSupportCheckerDuringTest(t)
	ctx, store, client := testSetup(t)
	kvRecorder := client.KV.(*storagetesting.KVRecorder)

	const podCount = 25
	for i := range podCount {
		pod := &example.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("pod-%02d", i)}}
		if err := store.Create(ctx, fmt.Sprintf("/pods/ns/pod-%02d", i), pod, &example.Pod{}, 0); err != nil {
			t.Fatal(err)
		}
	}

	streamedList := func(t *testing.T, rv string, rvMatch metav1.ResourceVersionMatch) *example.PodList {
		t.Helper()
		out := &example.PodList{}
		opts := storage.ListOptions{ResourceVersion: rv, ResourceVersionMatch: rvMatch, Predicate: storage.Everything, Recursive: true}
		if err := store.GetList(ctx, "/pods/", opts, out); err != nil {
			t.Fatalf("GetList failed: %v", err)
		}
		if streams := kvRecorder.GetStreamReadsAndReset(); streams == 0 {
			t.Error("expected the list to be served by RangeStream")
		}
		if out.Continue != "" || out.RemainingItemCount != nil {
			t.Errorf("streamed list must not paginate, got continue %q, remainingItemCount %v", out.Continue, out.RemainingItemCount)
		}
		return out
	}

	snapshot := streamedList(t, "", "")
	if len(snapshot.Items) != podCount {
		t.Errorf("consistent list returned %d items, want %d", len(snapshot.Items), podCount)
	}

	extra := &example.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "pod-extra"}}
	if err := store.Create(ctx, "/pods/ns/pod-extra", extra, &example.Pod{}, 0); err != nil {
		t.Fatal(err)
	}

	exact := streamedList(t, snapshot.ResourceVersion, metav1.ResourceVersionMatchExact)
	if len(exact.Items) != podCount {
		t.Errorf("exact list returned %d items, want %d", len(exact.Items), podCount)
	}
	if exact.ResourceVersion != snapshot.ResourceVersion {
		t.Errorf("exact list returned resourceVersion %s, want %s", exact.ResourceVersion, snapshot.ResourceVersion)
	}

	notOlder := streamedList(t, snapshot.ResourceVersion, "")
	if len(notOlder.Items) != podCount+1 {
		t.Errorf("notOlderThan list returned %d items, want %d", len(notOlder.Items), podCount+1)
	}
}

// TestGetCurrentResourceVersion checks that the store's current resource
// version is the server's revision, moved by a write outside the store.
func TestGetCurrentResourceVersion(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, client := testSetup(t)
		pod := &example.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "pod-1"}}
		created := &example.Pod{}
		if err := store.Create(ctx, "/pods/ns/pod-1", pod, created, 0); err != nil {
			t.Fatal(err)
		}
		versioner := storage.APIObjectVersioner{}
		podRV, err := versioner.ParseResourceVersion(created.ResourceVersion)
		if err != nil {
			t.Fatal(err)
		}
		current, err := store.GetCurrentResourceVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if current != podRV {
			t.Errorf("current resource version %d, want the pod's %d", current, podRV)
		}

		resp, err := client.KV.Put(ctx, "compact_rev_key", created.ResourceVersion)
		if err != nil {
			t.Fatal(err)
		}
		current, err = store.GetCurrentResourceVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if current != uint64(resp.Header.Revision) {
			t.Errorf("current resource version %d, want the unrelated write's revision %d", current, resp.Header.Revision)
		}

		got := &example.Pod{}
		if err := store.Get(ctx, "/pods/ns/pod-1", storage.GetOptions{}, got); err != nil {
			t.Fatal(err)
		}
		if got.ResourceVersion != created.ResourceVersion {
			t.Errorf("pod's resource version changed from %s to %s", created.ResourceVersion, got.ResourceVersion)
		}
	})
}
