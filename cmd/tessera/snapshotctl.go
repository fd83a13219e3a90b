package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tesserakv/tessera/etcdsnap"
	"github.com/tesserakv/tessera/node"
)

// runRestore is `tessera ctl restore FILE --data-dir DIR` (and its other
// name, import-etcd-snapshot): it prepares a new member's data directory
// from an etcd v3 snapshot file, written by etcd or by Tessera.
func runRestore(args []string, dataDir string, skipHashCheck bool, stdout io.Writer) error {
	if len(args) != 1 {
		return fmt.Errorf("restore takes one snapshot file, got %d arguments", len(args))
	}
	if dataDir == "" {
		return fmt.Errorf("restore needs --data-dir")
	}
	info, err := node.PrepareRestore(args[0], dataDir, skipHashCheck)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Prepared %s from %s: revision %d, compacted at %d, %d versions, %d leases (sha256 %s).\n",
		dataDir, args[0], info.Revision, info.CompactRevision, info.Versions, info.Leases, info.ID)
	fmt.Fprintf(stdout, "Start each --initial-cluster member of the new cluster from a directory prepared so (nodes that --join need none); member 1 loads the snapshot.\n")
	return nil
}

// runExport is `tessera ctl export-etcd-snapshot FILE`: it saves a
// snapshot of the cluster in etcd's format (as `etcdctl snapshot save`
// does), which `etcdutl snapshot restore` restores into etcd.
func runExport(ctx context.Context, args []string, endpoints string, creds ctlUser, tlsCfg *tls.Config, stdout io.Writer) error {
	if len(args) != 1 {
		return fmt.Errorf("export-etcd-snapshot takes one file, got %d arguments", len(args))
	}
	eps := splitList(endpoints)
	if len(eps) == 0 {
		return fmt.Errorf("export-etcd-snapshot needs an endpoint (--endpoints)")
	}
	// A snapshot is one member's, as etcdctl takes it.
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps[:1], Username: creds.user, Password: creds.password, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		return err
	}
	defer rc.Close()
	part := args[0] + ".part"
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, rc)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = etcdsnap.CheckHash(part)
	}
	if err == nil {
		err = os.Rename(part, args[0])
	}
	if err != nil {
		_ = os.Remove(part)
		return err
	}
	fmt.Fprintf(stdout, "Snapshot saved at %s (%d bytes)\n", args[0], n)
	return nil
}
