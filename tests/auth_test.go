package tests

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/server"
)

// authSteps is an operator's session with etcdctl: users, roles and
// permissions made, auth turned on, then each user's requests, allowed and
// refused, and the changes an administrator makes afterwards.
var authSteps = []struct {
	args  string
	stdin string
}{
	{args: "put a 1"},
	{args: "auth enable"},
	{args: "user add root:rootpw"},
	{args: "user add root:x"},
	{args: "user grant-role root root"},
	{args: "user grant-role root root"},
	{args: "role add reader"},
	{args: "role add reader"},
	{args: "role grant-permission reader read --prefix /app/"},
	{args: "role grant-permission reader readwrite /rw"},
	{args: "role grant-permission reader write /w /x"},
	{args: "role grant-permission nosuch read /x"},
	{args: "user add alice:apw"},
	{args: "user grant-role alice reader"},
	{args: "user grant-role alice nosuch"},
	{args: "user revoke-role alice nosuch"},
	{args: "auth enable"},
	{args: "auth status"},
	{args: "get a"},
	{args: "--user root:rootpw get a"},
	{args: "--user root:rootpw put /app/x 1"},
	{args: "--user alice:apw get /app/x"},
	{args: "--user alice:apw get /app/ --prefix"},
	{args: "--user alice:apw get /ap --prefix"},
	{args: "--user alice:apw put /app/y 2"},
	{args: "--user alice:apw put /rw 2"},
	{args: "--user alice:apw get /rw"},
	{args: "--user alice:apw put /w1 2"},
	{args: "--user alice:apw get /w1"},
	{args: "--user alice:apw del /w /x"},
	{args: "--user alice:apw del /w /y"},
	{args: "--user alice:apw get a"},
	{args: "--user alice:apw txn", stdin: "\nput /rw 3\n\nput a 4\n"},
	{args: "--user alice:apw txn", stdin: "\nput /rw 3\n\nput /rw 4\n"},
	{args: "--user alice:apw txn", stdin: "value(\"a\") = \"1\"\n\nput /rw 3\n\nput /rw 4\n"},
	{args: "--user alice:bad get /app/x"},
	{args: "--user bob:x get a"},
	{args: "--user alice:apw watch /secret"},
	{args: "--user alice:apw user list"},
	{args: "--user alice:apw user get alice"},
	{args: "--user alice:apw user get root"},
	{args: "--user alice:apw role get reader"},
	{args: "--user alice:apw role get root"},
	{args: "--user alice:apw compaction 2"},
	{args: "--user alice:apw alarm list"},
	{args: "--user alice:apw alarm disarm"},
	{args: "--user alice:apw defrag"},
	{args: "--user alice:apw endpoint hashkv"},
	{args: "--user root:rootpw user list"},
	{args: "--user root:rootpw role list"},
	{args: "--user root:rootpw role get reader"},
	{args: "--user root:rootpw role get root"},
	{args: "--user root:rootpw user get alice"},
	{args: "--user root:rootpw user delete root"},
	{args: "--user root:rootpw role delete root"},
	{args: "--user root:rootpw user revoke-role root root"},
	{args: "--user root:rootpw role revoke-permission reader /nope"},
	{args: "--user root:rootpw role revoke-permission reader /app/ --prefix"},
	{args: "--user alice:apw get /app/x"},
	{args: "--user root:rootpw user passwd alice --interactive=false", stdin: "newpw\n"},
	{args: "--user alice:apw get /rw"},
	{args: "--user alice:newpw get /rw"},
	{args: "--user root:rootpw role delete reader"},
	{args: "--user alice:newpw get /rw"},
	{args: "--user root:rootpw user get alice"},
	{args: "--user root:rootpw user delete alice"},
	{args: "--user alice:newpw get /rw"},
	{args: "--user root:rootpw auth status"},
	{args: "--user root:rootpw auth disable"},
	{args: "get a"},
	{args: "auth status"},
}

// TestEtcdctlAuthMatchesEtcd runs the same etcdctl session against etcd
// v3.7.3 and a Tessera node: every command answers the same, refusals
// with etcd's messages, down to the auth revision `auth status` shows.
func TestEtcdctlAuthMatchesEtcd(t *testing.T) {
	e := startEtcd(t)
	c := testcluster.Start(t, 1)
	tessera := strings.TrimPrefix(c.Nodes[0].ClientURL, "http://")
	for i, step := range authSteps {
		want := etcdctlAnswer(t, e.endpoint, step.stdin, step.args)
		got := etcdctlAnswer(t, tessera, step.stdin, step.args)
		if got != want {
			t.Errorf("step %d, etcdctl %s:\n etcd:    %q\n tessera: %q", i, step.args, want, got)
		}
	}
}

// etcdctlAnswer runs etcdctl and returns its output, or its error line.
func etcdctlAnswer(t *testing.T, endpoint, stdin, args string) string {
	t.Helper()
	out, err := etcdctl(t, endpoint, stdin, strings.Fields(args)...)
	if err != nil {
		var lines []string
		for _, l := range strings.Split(err.Error(), "\n") {
			if strings.HasPrefix(l, "Error:") || strings.HasPrefix(l, "watch was canceled") || strings.Contains(l, "Error: ") {
				lines = append(lines, l[strings.Index(l, "Error:")+0:])
			}
		}
		out += "ERR " + strings.Join(lines, "|")
	}
	// What differs between any two servers: hashes, member IDs, revisions
	// in hashkv's table.
	return hashLine.ReplaceAllString(out, "$1 HASH")
}

var hashLine = regexp.MustCompile(`(?m)^(\S+), \d+, \d+, \d+$`)

// TestRBACAcrossNodes: on three nodes, with auth on, each kind of
// permission on a key, a range and a prefix allows exactly its requests
// through any node; a Txn touching a forbidden key in the branch that does
// not run is refused whole; a watch on a forbidden prefix is cancelled; a
// revoked role is refused on every node as soon as the revoke returns;
// Election and Lock calls are checked as the caller's; and the nodes'
// own service refuses clients without the cluster's peer token.
func TestRBACAcrossNodes(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	admin := c.Client(c.Nodes[0].ClientURL)
	must := mustOK(t)
	must(admin.Put(ctx, "k", "0"))
	must(admin.UserAdd(ctx, "root", "rootpw"))
	must(admin.UserGrantRole(ctx, "root", "root"))
	must(admin.UserAdd(ctx, "u", "upw"))
	for _, r := range []struct {
		role, key, end string
		perm           clientv3.PermissionType
	}{
		{"r-key", "key", "", clientv3.PermissionType(clientv3.PermRead)},
		{"w-range", "ra", "rm", clientv3.PermissionType(clientv3.PermWrite)},
		{"rw-prefix", "p/", clientv3.GetPrefixRangeEnd("p/"), clientv3.PermissionType(clientv3.PermReadWrite)},
	} {
		must(admin.RoleAdd(ctx, r.role))
		must(admin.RoleGrantPermission(ctx, r.role, r.key, r.end, r.perm))
		must(admin.UserGrantRole(ctx, "u", r.role))
	}
	must(admin.AuthEnable(ctx))
	root := authClient(t, c.Nodes[0].ClientURL, "root", "rootpw")
	must(root.Put(ctx, "key", "v"))
	must(root.Put(ctx, "rb", "v"))

	users := []*clientv3.Client{
		authClient(t, c.Nodes[0].ClientURL, "u", "upw"),
		authClient(t, c.Nodes[1].ClientURL, "u", "upw"),
		authClient(t, c.Nodes[2].ClientURL, "u", "upw"),
	}
	denied := func(err error) bool { return errors.Is(err, rpctypes.ErrPermissionDenied) }
	cases := []struct {
		name   string
		op     func(cli *clientv3.Client) error
		denied bool
	}{
		{"read key", func(cli *clientv3.Client) error { _, err := cli.Get(ctx, "key"); return err }, false},
		{"write key", func(cli *clientv3.Client) error { _, err := cli.Put(ctx, "key", "x"); return err }, true},
		{"read a key past it", func(cli *clientv3.Client) error { _, err := cli.Get(ctx, "key", clientv3.WithRange("kez")); return err }, true},
		{"write in range", func(cli *clientv3.Client) error { _, err := cli.Put(ctx, "rb", "x"); return err }, false},
		{"delete range within", func(cli *clientv3.Client) error {
			_, err := cli.Delete(ctx, "rc", clientv3.WithRange("rl"))
			return err
		}, false},
		{"delete range past its end", func(cli *clientv3.Client) error {
			_, err := cli.Delete(ctx, "rc", clientv3.WithRange("rz"))
			return err
		}, true},
		{"read in write-only range", func(cli *clientv3.Client) error { _, err := cli.Get(ctx, "rb"); return err }, true},
		{"put with prev_kv in write-only range", func(cli *clientv3.Client) error { _, err := cli.Put(ctx, "rb", "x", clientv3.WithPrevKV()); return err }, true},
		{"read prefix", func(cli *clientv3.Client) error { _, err := cli.Get(ctx, "p/", clientv3.WithPrefix()); return err }, false},
		{"write in prefix", func(cli *clientv3.Client) error { _, err := cli.Put(ctx, "p/x", "x"); return err }, false},
		{"read a wider prefix", func(cli *clientv3.Client) error { _, err := cli.Get(ctx, "p", clientv3.WithPrefix()); return err }, true},
		{"read everything", func(cli *clientv3.Client) error { _, err := cli.Get(ctx, "", clientv3.WithFromKey()); return err }, true},
		{"txn allowed in both branches", func(cli *clientv3.Client) error {
			_, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("key"), "=", "v")).Then(clientv3.OpPut("p/t", "1")).Else(clientv3.OpGet("p/t")).Commit()
			return err
		}, false},
		{"txn with a forbidden else branch", func(cli *clientv3.Client) error {
			_, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("key"), "=", "v")).Then(clientv3.OpPut("p/t", "1")).Else(clientv3.OpPut("k", "1")).Commit()
			return err
		}, true},
		{"txn comparing a forbidden key", func(cli *clientv3.Client) error {
			_, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("k"), "=", "0")).Then(clientv3.OpPut("p/t", "1")).Commit()
			return err
		}, true},
		{"compaction", func(cli *clientv3.Client) error { _, err := cli.Compact(ctx, 1); return err }, true},
		{"election on the prefix", func(cli *clientv3.Client) error {
			s, err := concurrency.NewSession(cli)
			if err != nil {
				return err
			}
			// A session revoked by a user that may write its keys.
			defer func() {
				if err := s.Close(); err != nil {
					t.Errorf("closing the election's session: %v", err)
				}
			}()
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return concurrency.NewElection(s, "p/elect").Campaign(cctx, "me")
		}, false},
	}
	for _, tc := range cases {
		for i, cli := range users {
			err := tc.op(cli)
			if tc.denied && !denied(err) || !tc.denied && err != nil {
				t.Errorf("%s through n%d: %v (want denied: %v)", tc.name, i+1, err, tc.denied)
			}
		}
	}
	// A lease is renewed, revoked or attached to a key only by a user who
	// may write every key it holds, as etcd checks.
	rootLease, err := root.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	must(root.Put(ctx, "k", "0", clientv3.WithLease(rootLease.ID)))
	if _, err := users[1].KeepAliveOnce(ctx, rootLease.ID); !denied(err) {
		t.Errorf("keep-alive of a lease holding a key the user may not write: %v", err)
	}
	if _, err := users[1].Revoke(ctx, rootLease.ID); !denied(err) {
		t.Errorf("revoking a lease holding a key the user may not write: %v", err)
	}
	if _, err := users[1].Put(ctx, "p/leased", "x", clientv3.WithLease(rootLease.ID)); !denied(err) {
		t.Errorf("attaching a lease holding a key the user may not write: %v", err)
	}
	own, err := users[1].Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	must(users[1].Put(ctx, "p/own", "x", clientv3.WithLease(own.ID)))
	if _, err := users[1].KeepAliveOnce(ctx, own.ID); err != nil {
		t.Errorf("keep-alive of the user's own lease: %v", err)
	}

	// Nothing a refused txn held changed.
	if get, err := root.Get(ctx, "k"); err != nil || string(get.Kvs[0].Value) != "0" {
		t.Fatalf("k after the refused txns: %v %v", get, err)
	}

	// A watch of a forbidden prefix is cancelled with etcd's reason; an
	// allowed one is created.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp := <-users[2].Watch(wctx, "s/", clientv3.WithPrefix())
	if !resp.Canceled || !strings.Contains(resp.Err().Error(), "permission denied") {
		t.Fatalf("watch of a forbidden prefix: %+v %v", resp, resp.Err())
	}
	ok := users[2].Watch(wctx, "p/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if resp := <-ok; !resp.Created || resp.Canceled {
		t.Fatalf("watch of an allowed prefix: %+v", resp)
	}

	// Revoking a role through n1 is in force on n3 once the call returns.
	must(root.UserRevokeRole(ctx, "u", "rw-prefix"))
	if _, err := users[2].Put(ctx, "p/y", "1"); !denied(err) {
		t.Fatalf("write in the prefix through n3 right after the revoke: %v", err)
	}

	// The node-to-node service answers only nodes (and root, for the
	// ctl's calls).
	cc, err := grpc.NewClient(strings.TrimPrefix(c.Nodes[1].ClientURL, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	internal := tesserapb.NewInternalClient(cc)
	if _, err := internal.GetRevisions(ctx, &tesserapb.GetRevisionsRequest{Count: 1}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("GetRevisions from a client: %v", err)
	}
	if _, err := internal.ListNodes(ctx, &tesserapb.ListNodesRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ListNodes without a user: %v", err)
	}
	tok, err := pb.NewAuthClient(cc).Authenticate(ctx, &pb.AuthenticateRequest{Name: "root", Password: "rootpw"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := internal.ListNodes(metadata.AppendToOutgoingContext(ctx, "token", tok.Token), &tesserapb.ListNodesRequest{}); err != nil {
		t.Fatalf("ListNodes as root: %v", err)
	}

	// The JSON gateway takes the token in Authorization, as etcd's does.
	post := func(token, path, body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, c.Nodes[2].ClientURL+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}
	rangeKey := `{"key":"` + base64.StdEncoding.EncodeToString([]byte("key")) + `"}`
	if code, out := post("", "/v3/kv/range", rangeKey); code != http.StatusBadRequest || !strings.Contains(out, "user name is empty") {
		t.Fatalf("gateway range without a token: %d %s", code, out)
	}
	userTok, err := pb.NewAuthClient(cc).Authenticate(ctx, &pb.AuthenticateRequest{Name: "u", Password: "upw"})
	if err != nil {
		t.Fatal(err)
	}
	if code, out := post(userTok.Token, "/v3/kv/range", rangeKey); code != http.StatusOK || !strings.Contains(out, `"count":"1"`) {
		t.Fatalf("gateway range with u's token: %d %s", code, out)
	}
	if code, out := post(userTok.Token, "/v3/kv/put", `{"key":"`+base64.StdEncoding.EncodeToString([]byte("key"))+`"}`); code != http.StatusForbidden {
		t.Fatalf("gateway put with u's token: %d %s", code, out)
	}
	// Keep-alives through the gateway are checked as through gRPC.
	if _, out := post(userTok.Token, "/v3/lease/keepalive", fmt.Sprintf(`{"ID":%d}`, rootLease.ID)); !strings.Contains(out, "permission denied") {
		t.Fatalf("gateway keep-alive of a lease holding a key u may not write: %s", out)
	}
	bare, err := users[2].Grant(ctx, 60) // no keys: anyone may renew it
	if err != nil {
		t.Fatal(err)
	}
	if _, out := post(userTok.Token, "/v3/lease/keepalive", fmt.Sprintf(`{"ID":%d}`, bare.ID)); !strings.Contains(out, `"TTL"`) {
		t.Fatalf("gateway keep-alive of a lease without keys: %s", out)
	}
}

// authClient is a clientv3 client of one node, logged in as user.
func authClient(t *testing.T, url, user, password string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, Username: user, Password: password, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestJWTAcrossNodes: with --auth-token jwt on three nodes sharing the
// key, a token handed out by one node is accepted by the others; a change
// of the auth state outdates it ("revision of auth store is old"), and
// clientv3 logs in again and goes on.
func TestJWTAcrossNodes(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "jwt.key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	c := testcluster.Start(t, 3, func(cfg *server.Config) {
		cfg.AuthToken = "jwt,priv-key=" + keyFile + ",sign-method=ES256,ttl=10m"
	})
	ctx := ctxT(t)
	admin := c.Client(c.Nodes[0].ClientURL)
	must := mustOK(t)
	must(admin.UserAdd(ctx, "root", "rootpw"))
	must(admin.UserGrantRole(ctx, "root", "root"))
	must(admin.AuthEnable(ctx))

	cc, err := grpc.NewClient(strings.TrimPrefix(c.Nodes[0].ClientURL, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	tok, err := pb.NewAuthClient(cc).Authenticate(ctx, &pb.AuthenticateRequest{Name: "root", Password: "rootpw"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(tok.Token, ".") != 2 || !strings.HasPrefix(tok.Token, "eyJ") {
		t.Fatalf("Authenticate answered %q, not a JWT", tok.Token)
	}
	cc3, err := grpc.NewClient(strings.TrimPrefix(c.Nodes[2].ClientURL, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc3.Close()
	withTok := metadata.AppendToOutgoingContext(ctx, "token", tok.Token)
	if _, err := pb.NewKVClient(cc3).Put(withTok, &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatalf("n1's token at n3: %v", err)
	}

	root := authClient(t, c.Nodes[1].ClientURL, "root", "rootpw")
	must(root.Get(ctx, "k"))
	must(root.RoleAdd(ctx, "other")) // the auth revision moves on
	if _, err := pb.NewKVClient(cc3).Put(withTok, &pb.PutRequest{Key: []byte("k"), Value: []byte("w")}); !errors.Is(rpctypes.Error(err), rpctypes.ErrAuthOldRevision) {
		t.Fatalf("a token older than the auth state: %v", err)
	}
	if _, err := root.Put(ctx, "k", "x"); err != nil {
		t.Fatalf("clientv3 after the auth state changed: %v", err)
	}
}

// mustOK returns a function that fails the test on a call's error, for
// calls whose answer the test does not need (must(cli.Put(...))).
func mustOK(t *testing.T) func(any, error) {
	return func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}
