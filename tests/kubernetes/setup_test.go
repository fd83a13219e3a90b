package kubernetes

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/grpclog"

	"k8s.io/apimachinery/pkg/api/apitesting"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apiserver/pkg/apis/example"
	examplev1 "k8s.io/apiserver/pkg/apis/example/v1"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/etcd3"
	etcdfeature "k8s.io/apiserver/pkg/storage/feature"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/apiserver/pkg/storage/value"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	"k8s.io/utils/clock"
)

var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
)

// defaultTestPrefix is what the default transformer puts in front of every
// stored value, as in the etcd3 store's own tests.
const defaultTestPrefix = "test!"

func init() {
	metav1.AddToGroupVersion(scheme, metav1.SchemeGroupVersion)
	utilruntime.Must(example.AddToScheme(scheme))
	utilruntime.Must(examplev1.AddToScheme(scheme))

	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))
}

func TestMain(m *testing.M) {
	code := m.Run()
	removeBinary()
	os.Exit(code)
}

// configuration is one setting of kube-apiserver's feature gates the whole
// suite runs under.
type configuration struct {
	name string
	// rangeStream, when set, overrides the EtcdRangeStream gate.
	rangeStream *bool
}

var configurations = []configuration{
	// Kubernetes 1.37's defaults: lists are read with RangeStream.
	{name: "defaults"},
	// The Range fallback: lists are read with paginated Range calls.
	{name: "EtcdRangeStream=false", rangeStream: new(false)},
}

// forEachConfiguration runs f as a subtest under every configuration.
func forEachConfiguration(t *testing.T, f func(t *testing.T)) {
	for _, c := range configurations {
		t.Run(c.name, func(t *testing.T) {
			if c.rangeStream != nil {
				featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.EtcdRangeStream, *c.rangeStream)
			}
			resetFeatureSupportCheckerDuringTest(t)
			f(t)
		})
	}
}

// resetFeatureSupportCheckerDuringTest gives the test a fresh etcd feature
// support checker, so what one node answered does not carry to the next.
func resetFeatureSupportCheckerDuringTest(t *testing.T) {
	t.Helper()
	orig := etcdfeature.DefaultFeatureSupportChecker
	etcdfeature.DefaultFeatureSupportChecker = etcdfeature.NewDefaultFeatureSupportChecker()
	t.Cleanup(func() { etcdfeature.DefaultFeatureSupportChecker = orig })
}

func newPod() runtime.Object     { return &example.Pod{} }
func newPodList() runtime.Object { return &example.PodList{} }

func newTestTransformer() value.Transformer {
	return storagetesting.NewPrefixTransformer([]byte(defaultTestPrefix), false)
}

func newTestLeaseManagerConfig() etcd3.LeaseManagerConfig {
	cfg := etcd3.NewDefaultLeaseManagerConfig()
	// The tests wait at most 30s at a time: reuse a lease for 1s only.
	cfg.ReuseDurationSeconds = 1
	return cfg
}

type setupOptions struct {
	nodeFlags      []string
	codec          runtime.Codec
	newFunc        func() runtime.Object
	newListFunc    func() runtime.Object
	prefix         string
	resourcePrefix string
	groupResource  schema.GroupResource
	transformer    value.Transformer
	leaseConfig    etcd3.LeaseManagerConfig
}

type setupOption func(*setupOptions)

func withDefaults(o *setupOptions) {
	o.codec = apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion)
	o.newFunc = newPod
	o.newListFunc = newPodList
	o.prefix = ""
	o.resourcePrefix = "/pods/"
	o.groupResource = schema.GroupResource{Resource: "pods"}
	o.transformer = newTestTransformer()
	o.leaseConfig = newTestLeaseManagerConfig()
}

// withNodeFlags passes extra flags to the tessera node.
func withNodeFlags(flags ...string) setupOption {
	return func(o *setupOptions) { o.nodeFlags = append(o.nodeFlags, flags...) }
}

// withProgressNotify has the node send watch progress notifications every
// second, as the etcd3 tests configure their embedded etcd for bookmarks.
func withProgressNotify() setupOption {
	return withNodeFlags("--watch-progress-notify-interval", "1s")
}

func withTransformer(tr value.Transformer) setupOption {
	return func(o *setupOptions) { o.transformer = tr }
}

func withCodec(c runtime.Codec) setupOption {
	return func(o *setupOptions) { o.codec = c }
}

// etcdStore is what etcd3.New returns, as far as the tests use it.
type etcdStore interface {
	storage.Interface
	CompactRevision() int64
}

// testStore is the etcd3 store under test with what the etcd3 package's own
// tests reach into its fields for.
type testStore struct {
	etcdStore
	codec runtime.Codec
	// transformer is the store's and its watcher's transformer; the tests
	// swap what it delegates to.
	transformer *switchableTransformer
	// keysPrefix is the store's resource prefix as stored in etcd.
	keysPrefix string
	client     *kubernetes.Client
}

// getKeys lists the keys of the store's resource prefix, as the store does
// for its size estimator.
func (s *testStore) getKeys(ctx context.Context) ([]string, error) {
	resp, err := s.client.KV.Get(ctx, s.keysPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys, nil
}

// UpdatePrefixTransformer implements storagetesting.InterfaceWithPrefixTransformer:
// the store and its watcher read and write through a modified copy of the
// current PrefixTransformer until the returned function restores it.
func (s *testStore) UpdatePrefixTransformer(modifier storagetesting.PrefixTransformerModifier) func() {
	original := s.transformer.get()
	prefixTransformer := original.(*storagetesting.PrefixTransformer)
	modified := *prefixTransformer
	s.transformer.set(modifier(&modified))
	return func() { s.transformer.set(original) }
}

// transformerOverride implements storagetesting.InterfaceWithTransformerOverride
// for a store (possibly wrapped) whose transformer is a switchableTransformer.
type transformerOverride struct {
	storage.Interface
	transformer *switchableTransformer
}

func (s *transformerOverride) UpdateTransformer(modifier storagetesting.TransformerModifier) func() {
	original := s.transformer.get()
	s.transformer.set(modifier(original))
	return func() { s.transformer.set(original) }
}

// switchableTransformer delegates to a transformer the tests can replace
// while the store runs.
type switchableTransformer struct {
	mu      sync.RWMutex
	current value.Transformer
}

func (s *switchableTransformer) get() value.Transformer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.current
}

func (s *switchableTransformer) set(tr value.Transformer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.current = tr
}

func (s *switchableTransformer) TransformFromStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, bool, error) {
	return s.get().TransformFromStorage(ctx, data, dataCtx)
}

func (s *switchableTransformer) TransformToStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, error) {
	return s.get().TransformToStorage(ctx, data, dataCtx)
}

// testSetup starts a fresh tessera node and returns an etcd3 store on it,
// configured as the etcd3 package's own testSetup configures its store on an
// embedded etcd, and the store's client, whose KV and Kubernetes interfaces
// record the reads made through them.
func testSetup(t *testing.T, opts ...setupOption) (context.Context, *testStore, *kubernetes.Client) {
	t.Helper()
	var o setupOptions
	for _, opt := range append([]setupOption{withDefaults}, opts...) {
		opt(&o)
	}
	n := startNode(t, o.nodeFlags...)
	st := storeOn(t, n.clientURL, o)
	return context.Background(), st, st.client
}

// storeOn returns an etcd3 store on the etcd (or Tessera) serving
// endpoint, set up as testSetup's.
func storeOn(t *testing.T, endpoint string, o setupOptions) *testStore {
	t.Helper()
	client := newClient(t, endpoint)

	transformer := &switchableTransformer{current: o.transformer}
	versioner := storage.APIObjectVersioner{}
	compactor := etcd3.NewCompactor(client.Client, 0, clock.RealClock{}, nil)
	t.Cleanup(compactor.Stop)
	s, err := etcd3.New(
		client,
		compactor,
		o.codec,
		o.newFunc,
		o.newListFunc,
		o.prefix,
		o.resourcePrefix,
		o.groupResource,
		transformer,
		o.leaseConfig,
		etcd3.NewDefaultDecoder(o.codec, versioner),
		versioner,
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	pathPrefix := path.Join("/", o.prefix)
	return &testStore{
		etcdStore:   s,
		codec:       o.codec,
		transformer: transformer,
		keysPrefix:  path.Join(pathPrefix, o.resourcePrefix) + "/",
		client:      client,
	}
}

// newClient connects a Kubernetes etcd client to the node, with recorders
// on its KV and Kubernetes interfaces as the etcd3 tests' test server has.
func newClient(t *testing.T, endpoint string) *kubernetes.Client {
	t.Helper()
	client, err := kubernetes.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 10 * time.Second,
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	recorder := storagetesting.NewKubernetesRecorder(client.Kubernetes)
	client.KV = storagetesting.NewKVRecorder(client.KV, recorder)
	client.Kubernetes = recorder
	return client
}

// checkStorageInvariants checks what the store writes for a key: a value
// with the transformer's prefix that decodes to a pod with neither a
// resource version nor a self link.
func checkStorageInvariants(client *clientv3.Client, codec runtime.Codec) storagetesting.KeyValidation {
	return func(ctx context.Context, t *testing.T, key string) {
		resp, err := client.KV.Get(ctx, key)
		if err != nil {
			t.Fatalf("etcdClient.KV.Get failed: %v", err)
		}
		if len(resp.Kvs) == 0 {
			t.Fatalf("expecting non empty result on key: %s", key)
		}
		decoded, err := runtime.Decode(codec, resp.Kvs[0].Value[len(defaultTestPrefix):])
		if err != nil {
			t.Fatalf("expecting successful decode of object from %v\n%v", err, string(resp.Kvs[0].Value))
		}
		obj := decoded.(*example.Pod)
		if obj.ResourceVersion != "" {
			t.Errorf("stored object should have empty resource version")
		}
		if obj.SelfLink != "" {
			t.Errorf("stored output should have empty selfLink")
		}
	}
}

// maxLimit is the etcd3 store's largest page size.
const maxLimit = 10000

// checkStorageCallsInvariants checks how many objects a list decoded and
// how many reads it sent: one, or, when paging, one per page with the page
// size doubling from pageSize up to maxLimit.
func checkStorageCallsInvariants(transformer *storagetesting.PrefixTransformer, recorder *storagetesting.KVRecorder) storagetesting.CallsValidation {
	return func(t *testing.T, pageSize, estimatedProcessedObjects uint64) {
		if reads := transformer.GetReadsAndReset(); reads != estimatedProcessedObjects {
			t.Errorf("unexpected reads: %d, expected: %d", reads, estimatedProcessedObjects)
		}
		estimatedGetCalls := uint64(1)
		if pageSize != 0 {
			currLimit := pageSize
			for sum := uint64(1); sum < estimatedProcessedObjects; {
				currLimit = min(currLimit*2, maxLimit)
				sum += currLimit
				estimatedGetCalls++
			}
		}
		if reads := recorder.GetReadsAndReset() + recorder.GetStreamReadsAndReset(); reads != estimatedGetCalls {
			t.Fatalf("unexpected reads: %d, want: %d", reads, estimatedGetCalls)
		}
	}
}

// compactStorage compacts the node at resourceVersion the way kube-apiserver's
// compactor does (a transaction on the compact_rev_key, then Compact through
// clientv3) and, when the store watches that key, waits until it has seen it.
func compactStorage(s *testStore, client *clientv3.Client) storagetesting.Compaction {
	return func(ctx context.Context, t *testing.T, resourceVersion string) {
		rv, err := storage.APIObjectVersioner{}.ParseResourceVersion(resourceVersion)
		if err != nil {
			t.Fatal(err)
		}
		var currentVersion int64
		currentVersion, _, _, err = etcd3.Compact(ctx, client, currentVersion, int64(rv))
		if err != nil {
			_, _, _, err = etcd3.Compact(ctx, client, currentVersion, int64(rv))
		}
		if err != nil {
			t.Fatal(err)
		}
		if utilfeature.DefaultFeatureGate.Enabled(features.ListFromCacheSnapshot) {
			for s.CompactRevision() != int64(rv) {
				select {
				case <-ctx.Done():
					t.Fatal(ctx.Err())
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
	}
}

// increaseRVFunc moves the node's revision on by writing an unrelated key.
func increaseRVFunc(client *clientv3.Client) storagetesting.IncreaseRVFunc {
	return func(ctx context.Context, t *testing.T) int64 {
		resp, err := client.KV.Put(ctx, "increaseRV", "ok")
		if err != nil {
			t.Fatalf("Could not update increaseRV: %v", err)
		}
		return resp.Header.Revision
	}
}

// corruptObjectError returns the error the etcd3 store's corrupt-object
// handling gives a value its transformer cannot read: the error the etcd3
// tests build directly from the package's unexported type.
func corruptObjectError(t *testing.T) error {
	t.Helper()
	tr := etcd3.WithCorruptObjErrorHandlingTransformer(failingTransformer{err: fmt.Errorf("bits flipped")})
	_, _, err := tr.TransformFromStorage(context.Background(), nil, value.DefaultContext{})
	if err == nil {
		t.Fatal("a failing transformer wrapped for corrupt objects returned no error")
	}
	return err
}

type failingTransformer struct{ err error }

func (f failingTransformer) TransformFromStorage(context.Context, []byte, value.Context) ([]byte, bool, error) {
	return nil, false, f.err
}

func (f failingTransformer) TransformToStorage(context.Context, []byte, value.Context) ([]byte, error) {
	return nil, f.err
}
