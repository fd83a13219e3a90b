package kubernetes

// The etcd3 store's tests from k8s.io/apiserver/pkg/storage/etcd3/store_test.go
// that run the conformance suite (storagetesting.RunTest...), under the same
// names, each on a fresh Tessera node and under every configuration.

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"k8s.io/apimachinery/pkg/api/apitesting"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	examplev1 "k8s.io/apiserver/pkg/apis/example/v1"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage/etcd3"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/apiserver/pkg/storage/value"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
)

// TestFeatureGateDefaults checks that the "defaults" configuration is the
// RangeStream one, so the two configurations differ.
func TestFeatureGateDefaults(t *testing.T) {
	if !utilfeature.DefaultFeatureGate.Enabled(features.EtcdRangeStream) {
		t.Fatalf("%s is off by default: the defaults configuration no longer reads lists with RangeStream", features.EtcdRangeStream)
	}
}

func TestCreate(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, client := testSetup(t)
		storagetesting.RunTestCreate(ctx, t, store, checkStorageInvariants(client.Client, store.codec))
	})
}

func TestCreateWithTTL(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestCreateWithTTL(ctx, t, store)
	})
}

func TestCreateWithKeyExist(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestCreateWithKeyExist(ctx, t, store)
	})
}

func TestGet(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestGet(ctx, t, store)
	})
}

func TestUnconditionalDelete(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestUnconditionalDelete(ctx, t, store)
	})
}

func TestConditionalDelete(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestConditionalDelete(ctx, t, store)
	})
}

func TestDeleteWithSuggestion(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestDeleteWithSuggestion(ctx, t, store)
	})
}

func TestDeleteWithSuggestionAndConflict(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestDeleteWithSuggestionAndConflict(ctx, t, store)
	})
}

func TestDeleteWithSuggestionOfDeletedObject(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestDeleteWithSuggestionOfDeletedObject(ctx, t, store)
	})
}

func TestValidateDeletionWithSuggestion(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestValidateDeletionWithSuggestion(ctx, t, store)
	})
}

func TestValidateDeletionWithOnlySuggestionValid(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestValidateDeletionWithOnlySuggestionValid(ctx, t, store)
	})
}

func TestDeleteWithConflict(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestDeleteWithConflict(ctx, t, store)
	})
}

// testTransformer fails every read while set to fail.
type testTransformer struct {
	value.Transformer
	fail atomic.Bool
}

func (tt *testTransformer) setFailing(c bool) { tt.fail.Store(c) }

func (tt *testTransformer) TransformFromStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, bool, error) {
	if tt.fail.Load() {
		return nil, false, errors.New("synthetic error")
	}
	return tt.Transformer.TransformFromStorage(ctx, data, dataCtx)
}

// testCodec fails every decode while set to fail.
type testCodec struct {
	runtime.Codec
	fail atomic.Bool
}

func (tc *testCodec) setFailing(c bool) { tc.fail.Store(c) }

func (tc *testCodec) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	if tc.fail.Load() {
		return nil, nil, errors.New("synthetic error")
	}
	return tc.Codec.Decode(data, defaults, into)
}

func TestDeleteWithConflictAndMissingExpectedTransformOrDecodeError(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
		codec := &testCodec{Codec: apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion)}
		ctx, store, _ := testSetup(t, withCodec(codec))
		storagetesting.RunTestDeleteWithConflictAndMissingExpectedTransformOrDecodeError(ctx, t, store, codec.setFailing)
	})
}

func TestDeleteWithConflictAndExpectedTransformError(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
		transformer := &testTransformer{Transformer: newTestTransformer()}
		ctx, store, _ := testSetup(t, withTransformer(transformer))
		storagetesting.RunTestDeleteExpectedTransformOrDecodeError(ctx, t, store, transformer.setFailing)
	})
}

func TestDeleteWithConflictAndExpectedDecodeError(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
		codec := &testCodec{Codec: apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion)}
		ctx, store, _ := testSetup(t, withCodec(codec))
		storagetesting.RunTestDeleteExpectedTransformOrDecodeError(ctx, t, store, codec.setFailing)
	})
}

func TestDeleteWithSuggestionAndMissingExpectedTransformOrDecodeFailure(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestDeleteWithSuggestionAndMissingExpectedTransformOrDecodeError(ctx, t, store)
	})
}

func TestPreconditionalDeleteWithSuggestion(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestPreconditionalDeleteWithSuggestion(ctx, t, store)
	})
}

func TestPreconditionalDeleteWithSuggestionPass(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestPreconditionalDeleteWithOnlySuggestionPass(ctx, t, store)
	})
}

func TestListPaging(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestListPaging(ctx, t, store)
	})
}

func TestGetListNonRecursive(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, client := testSetup(t)
		storagetesting.RunTestGetListNonRecursive(ctx, t, increaseRVFunc(client.Client), store)
	})
}

func TestGetListRecursivePrefix(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestGetListRecursivePrefix(ctx, t, store)
	})
}

func TestKeySchema(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestKeySchema(ctx, t, store)
	})
}

func TestGetListWithErrorAggregation(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
		ctx, s, _ := testSetup(t)
		store := etcd3.NewStoreWithUnsafeCorruptObjectDeletion(s, schema.GroupResource{Resource: "pods"})
		storagetesting.RunTestGetListWithErrorAggregation(ctx, t, &transformerOverride{Interface: store, transformer: s.transformer}, corruptObjectError(t))
	})
}

func TestGetListWithoutErrorAggregation(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, false)
		ctx, s, _ := testSetup(t)
		storagetesting.RunTestGetListWithoutErrorAggregation(ctx, t, &transformerOverride{Interface: s, transformer: s.transformer}, corruptObjectError(t))
	})
}

func TestGuaranteedUpdate(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, client := testSetup(t)
		storagetesting.RunTestGuaranteedUpdate(ctx, t, store, checkStorageInvariants(client.Client, store.codec))
	})
}

func TestGuaranteedUpdateWithTTL(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestGuaranteedUpdateWithTTL(ctx, t, store)
	})
}

func TestGuaranteedUpdateChecksStoredData(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestGuaranteedUpdateChecksStoredData(ctx, t, store)
	})
}

func TestGuaranteedUpdateWithConflict(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestGuaranteedUpdateWithConflict(ctx, t, store)
	})
}

func TestGuaranteedUpdateWithSuggestionAndConflict(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestGuaranteedUpdateWithSuggestionAndConflict(ctx, t, store)
	})
}

func TestTransformationFailure(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestTransformationFailure(ctx, t, store)
	})
}

// TestList also checks which read served the lists: RangeStream when the
// EtcdRangeStream gate is on (Tessera implements it), paginated Range when off.
func TestList(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, client := testSetup(t)
		kvRecorder := client.KV.(*storagetesting.KVRecorder)
		storagetesting.RunTestList(ctx, t, store, compactStorage(store, client.Client), false, client.Kubernetes.(*storagetesting.KubernetesRecorder))
		streamReads := kvRecorder.GetStreamReadsAndReset()
		rangeStream := utilfeature.DefaultFeatureGate.Enabled(features.EtcdRangeStream)
		if rangeStream && streamReads == 0 {
			t.Error("expected lists to be served by RangeStream")
		}
		if !rangeStream && streamReads > 0 {
			t.Errorf("expected no RangeStream requests with the feature disabled, got %d", streamReads)
		}
	})
}

func TestConsistentList(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, client := testSetup(t)
		storagetesting.RunTestConsistentList(ctx, t, store, increaseRVFunc(client.Client), false, true, false)
	})
}

func TestCompactRevision(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		// The store learns of compactions through its compactor's watch on the
		// compact key, which runs with ListFromCacheSnapshot.
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ListFromCacheSnapshot, true)
		ctx, store, client := testSetup(t)
		storagetesting.RunTestCompactRevision(ctx, t, store, increaseRVFunc(client.Client), compactStorage(store, client.Client))
	})
}

// callsValidation counts the reads a list makes through the store's
// transformer and client.
func callsValidation(store *testStore) storagetesting.CallsValidation {
	return checkStorageCallsInvariants(store.transformer.get().(*storagetesting.PrefixTransformer), store.client.KV.(*storagetesting.KVRecorder))
}

func TestListContinuation(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestListContinuation(ctx, t, store, callsValidation(store))
	})
}

func TestListPaginationRareObject(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		// ListFromCacheSnapshot reads the compact key too, which the call
		// count does not expect.
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ListFromCacheSnapshot, false)
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestListPaginationRareObject(ctx, t, store, callsValidation(store))
	})
}

func TestListContinuationWithFilter(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestListContinuationWithFilter(ctx, t, store, callsValidation(store))
	})
}

func TestNamespaceScopedList(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestNamespaceScopedList(ctx, t, store)
	})
}

func TestListInconsistentContinuation(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, client := testSetup(t)
		storagetesting.RunTestListInconsistentContinuation(ctx, t, store, compactStorage(store, client.Client))
	})
}

func TestListResourceVersionMatch(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		ctx, store, _ := testSetup(t)
		storagetesting.RunTestListResourceVersionMatch(ctx, t, store)
	})
}

func TestStats(t *testing.T) {
	forEachConfiguration(t, func(t *testing.T) {
		for _, sizeBasedListCostEstimate := range []bool{true, false} {
			t.Run(fmt.Sprintf("SizeBasedListCostEstimate=%v", sizeBasedListCostEstimate), func(t *testing.T) {
				ctx, store, _ := testSetup(t)
				if sizeBasedListCostEstimate {
					if err := store.EnableResourceSizeEstimation(store.getKeys); err != nil {
						t.Fatal(err)
					}
				}
				storagetesting.RunTestStats(ctx, t, store, store.codec, store.transformer, sizeBasedListCostEstimate)
			})
		}
	})
}
