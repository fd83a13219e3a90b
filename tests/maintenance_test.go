package tests

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tesserakv/tessera/internal/testcluster"
	"github.com/tesserakv/tessera/server"
)

// TestHashKVAndDefragment: on three nodes holding every range (two, after
// a split), HashKV at one revision answers the same hash on every node,
// before and after a compaction and a defragmentation, and a later write
// changes the hash at the current revision but not at the old one; a
// revision below the compaction or in the future gets etcd's errors; and a
// value gone bad on one node's disk makes that node's hash differ.
func TestHashKVAndDefragment(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	cli := c.Client(c.Endpoints()...)
	for i := range 20 {
		if _, err := cli.Put(ctx, fmt.Sprintf("h/%02d", i%10), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Delete(ctx, "h/03"); err != nil {
		t.Fatal(err)
	}
	splitAt(t, c, c.Nodes[0], "h/05")
	waitRanges(t, c, 2)
	mid, err := cli.Put(ctx, "h/07", "mid")
	if err != nil {
		t.Fatal(err)
	}
	last, err := cli.Put(ctx, "h/08", "last")
	if err != nil {
		t.Fatal(err)
	}
	at := last.Header.Revision

	hashes := func(rev int64) []uint32 {
		t.Helper()
		var out []uint32
		for _, n := range c.Nodes {
			resp, err := cli.HashKV(ctx, n.ClientURL, rev)
			if err != nil {
				t.Fatalf("%s: HashKV(%d): %v", n.Config.Name, rev, err)
			}
			if resp.HashRevision != rev {
				t.Fatalf("%s: HashKV(%d) hashed revision %d", n.Config.Name, rev, resp.HashRevision)
			}
			out = append(out, resp.Hash)
		}
		for i, h := range out {
			if h != out[0] {
				t.Fatalf("HashKV(%d): %s answers %x, %s %x", rev, c.Nodes[i].Config.Name, h, c.Nodes[0].Config.Name, out[0])
			}
		}
		return out
	}
	before := hashes(at)
	if hashes(mid.Header.Revision)[0] == before[0] {
		t.Fatal("HashKV at two revisions a write apart answered one hash")
	}
	if _, err := cli.Put(ctx, "h/09", "after"); err != nil {
		t.Fatal(err)
	}
	if again := hashes(at); again[0] != before[0] {
		t.Fatalf("a later write changed the hash at revision %d", at)
	}

	if _, err := cli.Compact(ctx, mid.Header.Revision); err != nil {
		t.Fatal(err)
	}
	compacted := hashes(at)
	for _, n := range c.Nodes {
		if _, err := cli.Defragment(ctx, n.ClientURL); err != nil {
			t.Fatalf("%s: defragment: %v", n.Config.Name, err)
		}
	}
	if again := hashes(at); again[0] != compacted[0] {
		t.Fatal("defragmenting changed the hash")
	}
	get, err := cli.Get(ctx, "h/", clientv3.WithPrefix())
	if err != nil || get.Count != 9 {
		t.Fatalf("after defragmenting: %v %v", get, err)
	}

	if _, err := cli.HashKV(ctx, c.Nodes[0].ClientURL, mid.Header.Revision-1); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("HashKV below the compaction: %v", err)
	}
	if _, err := cli.HashKV(ctx, c.Nodes[0].ClientURL, at+1000); !errors.Is(err, rpctypes.ErrFutureRev) {
		t.Fatalf("HashKV in the future: %v", err)
	}

	// A value gone bad on one node's disk is noticed: its hash differs from
	// the others', which still agree.
	if err := c.Nodes[2].Server.Testing().CorruptValue("h/02", "bad"); err != nil {
		t.Fatal(err)
	}
	var after []uint32
	for _, n := range c.Nodes {
		resp, err := cli.HashKV(ctx, n.ClientURL, at)
		if err != nil {
			t.Fatalf("%s: HashKV(%d): %v", n.Config.Name, at, err)
		}
		after = append(after, resp.Hash)
	}
	if after[0] != compacted[0] || after[1] != compacted[0] || after[2] == compacted[0] {
		t.Fatalf("after n3's value went bad, HashKV(%d) answers %x, %x, %x; the others %x", at, after[0], after[1], after[2], compacted[0])
	}
}

// TestNodeMetrics: each node counts its live keys and the watches open on
// it, and times round trips to the other nodes, under etcd's names.
func TestNodeMetrics(t *testing.T) {
	c := testcluster.Start(t, 3, func(cfg *server.Config) { cfg.Knobs.LiveKeysInterval = 50 * time.Millisecond })
	ctx := ctxT(t)
	cli := c.Client(c.Nodes[0].ClientURL)
	for i := range 12 {
		if _, err := cli.Put(ctx, fmt.Sprintf("m/%02d", i%10), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Delete(ctx, "m/03"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watch := cli.Watch(wctx, "m/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if resp := <-watch; !resp.Created {
		t.Fatalf("watch: %+v", resp)
	}
	want := map[string]func(float64) bool{
		"etcd_debugging_mvcc_keys_total":                          func(v float64) bool { return v == 9 },
		"etcd_debugging_mvcc_watcher_total":                       func(v float64) bool { return v == 1 },
		"etcd_debugging_mvcc_watch_stream_total":                  func(v float64) bool { return v == 1 },
		"etcd_debugging_mvcc_current_revision":                    func(v float64) bool { return v >= 14 },
		`etcd_network_peer_round_trip_time_seconds_count{To="2"}`: func(v float64) bool { return v > 0 },
		`etcd_network_peer_round_trip_time_seconds_count{To="3"}`: func(v float64) bool { return v > 0 },
		"tessera_oracle_calls_total":                              func(v float64) bool { return v > 0 },
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		values := scrapeMetrics(t, c.Nodes[0].ClientURL)
		var wrong []string
		for name, ok := range want {
			if v, found := values[name]; !found || !ok(v) {
				wrong = append(wrong, fmt.Sprintf("%s = %v (%v)", name, v, found))
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics of n1: %s", strings.Join(wrong, "; "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestMoveLeader: etcd's MoveLeader, asked of the member Status names as
// leader (the meta range's), moves that leadership to the target, which
// every member then names; asked elsewhere it is etcd's "not leader", and
// a target that is no member is etcd's "bad leader transferee". Writes go
// on after the move.
func TestMoveLeader(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	cli := c.Client(c.Endpoints()...)
	var (
		leader, other *testcluster.Node
		target        uint64
	)
	for deadline := time.Now().Add(10 * time.Second); leader == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no node names itself the leader")
		}
		leader, other = nil, nil
		for _, n := range c.Nodes {
			st, err := cli.Status(ctx, n.ClientURL)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case st.Header.MemberId == st.Leader:
				leader = n
			case other == nil:
				other, target = n, st.Header.MemberId
			}
		}
	}
	if _, err := c.Client(other.ClientURL).MoveLeader(ctx, target); !errors.Is(err, rpctypes.ErrNotLeader) {
		t.Fatalf("MoveLeader asked of a follower: %v", err)
	}
	if _, err := c.Client(leader.ClientURL).MoveLeader(ctx, 99); !errors.Is(err, rpctypes.ErrBadLeaderTransferee) {
		t.Fatalf("MoveLeader to no member: %v", err)
	}
	if _, err := c.Client(leader.ClientURL).MoveLeader(ctx, target); err != nil {
		t.Fatalf("MoveLeader: %v", err)
	}
	for _, n := range c.Nodes {
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, err := cli.Status(ctx, n.ClientURL)
			if err == nil && st.Leader == target {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s names leader %v (%v) after the move to %d", n.Config.Name, st, err, target)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if _, err := cli.Put(ctx, "after-move", "v"); err != nil {
		t.Fatalf("put after the move: %v", err)
	}
}

// TestHTTPOnClientPort: a client URL serves etcd's HTTP endpoints beside
// gRPC on the one port, with etcd's answers.
func TestHTTPOnClientPort(t *testing.T) {
	c := testcluster.Start(t, 1)
	ctx := ctxT(t)
	url := c.Nodes[0].ClientURL
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, strings.TrimSpace(string(body))
	}
	for _, tc := range []struct {
		path string
		code int
		body string
	}{
		{"/version", 200, `{"etcdserver":"3.7.3","etcdcluster":"3.7.0"}`},
		{"/health", 200, `{"health":"true","reason":""}`},
		{"/health?serializable=true", 200, `{"health":"true","reason":""}`},
		{"/livez", 200, "ok"},
		{"/readyz", 200, "ok"},
		{"/livez?verbose", 200, "[+]serializable_read ok\nlivez check passed"},
		{"/readyz?verbose", 200, "[+]data_corruption ok\n[+]snapshot_restored ok\n[+]serializable_read ok\n[+]linearizable_read ok\nreadyz check passed"},
		{"/readyz?verbose&exclude=linearizable_read", 200, "[+]data_corruption ok\n[+]snapshot_restored ok\n[+]serializable_read ok\n[+]linearizable_read excluded: ok\nreadyz check passed"},
		{"/nothing", 404, "404 page not found"},
	} {
		if code, body := get(tc.path); code != tc.code || body != tc.body {
			t.Errorf("GET %s: %d %q, want %d %q", tc.path, code, body, tc.code, tc.body)
		}
	}
	// A bare HTTP/1.0 request is answered at once too.
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("GET /livez HTTP/1.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || !strings.HasPrefix(string(raw), "HTTP/1.0 200 OK") || !strings.HasSuffix(string(raw), "\r\n\r\nok") {
		t.Fatalf("bare HTTP/1.0 request: %q %v", raw, err)
	}

	// gRPC on the same port.
	cli := c.Client(url)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put beside HTTP: %v", err)
	}
	if get, err := cli.Get(ctx, "k"); err != nil || len(get.Kvs) != 1 {
		t.Fatalf("get beside HTTP: %v %v", get, err)
	}

	// etcd's JSON gateway: protobuf JSON with the .proto's field names,
	// bytes in base64, errors as google.rpc.Status.
	post := func(path, body string) (int, map[string]any) {
		t.Helper()
		resp, err := http.Post(url+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		out := map[string]any{}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("POST %s: answer: %v", path, err)
		}
		return resp.StatusCode, out
	}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	if code, out := post("/v3/kv/put", `{"key":"`+b64("gw")+`","value":"`+b64("one")+`"}`); code != 200 || out["header"].(map[string]any)["revision"] == nil {
		t.Fatalf("gateway put: %d %v", code, out)
	}
	if code, out := post("/v3/kv/range", `{"key":"`+b64("gw")+`"}`); code != 200 || out["count"] != "1" || out["kvs"].([]any)[0].(map[string]any)["value"] != b64("one") {
		t.Fatalf("gateway range: %d %v", code, out)
	}
	txn := `{"compare":[{"key":"` + b64("gw") + `","result":"EQUAL","target":"VALUE","value":"` + b64("one") + `"}],` +
		`"success":[{"request_put":{"key":"` + b64("gw") + `","value":"` + b64("two") + `"}}]}`
	if code, out := post("/v3/kv/txn", txn); code != 200 || out["succeeded"] != true {
		t.Fatalf("gateway txn: %d %v", code, out)
	}
	if code, out := post("/v3/lease/grant", `{"TTL":30}`); code != 200 || out["TTL"] != "30" || out["ID"] == nil {
		t.Fatalf("gateway lease grant: %d %v", code, out)
	}
	if code, out := post("/v3/maintenance/status", `{}`); code != 200 || out["version"] != "3.7.3" {
		t.Fatalf("gateway status: %d %v", code, out)
	}
	if code, out := post("/v3/kv/range", `{}`); code != 400 || out["message"] != "etcdserver: key is not provided" || out["code"] != float64(3) {
		t.Fatalf("gateway range without a key: %d %v", code, out)
	}
	if code, _ := get("/v3/kv/range"); code != http.StatusMethodNotAllowed {
		t.Fatalf("gateway GET: %d", code)
	}

	// Prometheus metrics, with etcd's names where dashboards look.
	values := scrapeMetrics(t, url)
	for name, want := range map[string]float64{
		"etcd_server_has_leader":                      1,
		"etcd_server_is_leader":                       1,
		"etcd_server_leader_changes_seen_total":       1,
		`etcd_server_version{server_version="3.7.3"}`: 1,
		"tessera_ranges":                              1,
		"tessera_range_leaders":                       1,
		"etcd_server_proposals_pending":               0,
		"etcd_server_proposals_failed_total":          0,
	} {
		if got, ok := values[name]; !ok || got != want {
			t.Errorf("/metrics: %s = %v (%v), want %v", name, got, ok, want)
		}
	}
	for _, name := range []string{"etcd_server_proposals_applied_total", "etcd_server_proposals_committed_total", "etcd_mvcc_db_total_size_in_bytes", "go_goroutines", "process_cpu_seconds_total",
		"tessera_pebble_disk_space_bytes", "tessera_pebble_wal_bytes_written_total", "tessera_pebble_memtable_bytes",
		`tessera_range_is_leader{range_id="2"}`, `tessera_range_size_bytes{range_id="2"}`,
		`dragonboat_raftnode_has_leader{shardid="2",replicaid="1"}`, "etcd_disk_backend_commit_duration_seconds_count",
		`grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}`,
		`grpc_server_handling_seconds_count{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}`} {
		if values[name] <= 0 {
			t.Errorf("/metrics: %s = %v, want more than 0", name, values[name])
		}
	}
}

// scrapeMetrics reads a node's /metrics, checks that Prometheus' own parser
// takes it, and returns its values keyed by name{labels} as written.
func scrapeMetrics(t *testing.T, clientURL string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(clientURL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	body := string(raw)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	if _, err := parser.TextToMetricFamilies(strings.NewReader(body)); err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	values := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if i := strings.LastIndexByte(line, ' '); i > 0 && !strings.HasPrefix(line, "#") {
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				values[line[:i]] = v
			}
		}
	}
	return values
}
