// Package kubernetes runs kube-apiserver's storage conformance suite
// (k8s.io/apiserver/pkg/storage/testing) through the real etcd3 store
// (k8s.io/apiserver/pkg/storage/etcd3) against a fresh Tessera node per test:
// every RunTest function that the etcd3 store's own tests run against an
// embedded etcd, under the same names, once with Kubernetes' feature gates at
// their defaults and once with EtcdRangeStream off.
//
// It is a module of its own so that the product's go.mod does not carry
// Kubernetes. The tests build the tessera binary from the repository root.
package kubernetes
