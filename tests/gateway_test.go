package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// gatewayCall posts body to a JSON gateway path and returns the HTTP
// status and the body with what differs between two clusters by nature
// normalized (normalizeJSON).
func gatewayCall(t *testing.T, base, path, body string, anyRevision bool) string {
	t.Helper()
	resp, err := http.Post(base+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if anyRevision {
		return resp.Status + " " + normalizeJSON(t, out, "revision")
	}
	return resp.Status + " " + normalizeJSON(t, out)
}

// normalizeJSON re-encodes a JSON document with sorted keys, the cluster
// and member IDs, Raft terms and lease IDs replaced by placeholders (they
// are each cluster's own) and the fields named in also, keeping whether
// each was there.
func normalizeJSON(t *testing.T, doc []byte, also ...string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		return "not JSON: " + string(doc)
	}
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				switch k {
				case "cluster_id", "member_id", "raft_term", "ID", "lease":
					x[k] = "<" + k + ">"
				default:
					if slices.Contains(also, k) {
						x[k] = "<" + k + ">"
					} else {
						walk(e)
					}
				}
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(v)
	out, _ := json.Marshal(v)
	return string(out)
}

// gatewayWatch opens a watch through the gateway and returns a function
// reading its next answer line, normalized.
func gatewayWatch(t *testing.T, base, body string) func() string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v3/watch", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return func() string {
		select {
		case l, ok := <-lines:
			if !ok {
				return "stream ended"
			}
			return normalizeJSON(t, []byte(l))
		case <-time.After(10 * time.Second):
			return "no answer within 10s"
		}
	}
}

// TestGatewayMatchesEtcd sends the same JSON gateway calls to a real
// etcd (v3.7.3) and to Tessera and compares the answers, status and body,
// with only cluster and member IDs, terms and lease IDs left out: put,
// range, delete, txn, lease grant, keep-alive and watch, and their errors.
func TestGatewayMatchesEtcd(t *testing.T) {
	e := startEtcd(t)
	c := testcluster.Start(t, 1)
	bases := map[string]string{"etcd": "http://" + e.endpoint, "tessera": c.Nodes[0].ClientURL}
	watches := map[string]func() string{}
	for name, base := range bases {
		watches[name] = gatewayWatch(t, base, `{"create_request": {"key": "Zm9v", "prev_kv": true}}`)
	}
	// foo=bar, bar=baz; keys and values in base64.
	calls := []struct {
		path, body  string
		anyRevision bool
	}{
		{"/v3/kv/put", `{"key": "Zm9v", "value": "YmFy"}`, false},
		{"/v3/kv/put", `{"key": "Zm9v", "value": "YmF6", "prev_kv": true}`, false},
		{"/v3/kv/range", `{"key": "Zm9v"}`, false},
		{"/v3/kv/range", `{"key": "Zm9v", "range_end": "Zm9w", "count_only": true}`, false},
		{"/v3/kv/range", `{"key": "bm9uZQ=="}`, false},
		{"/v3/kv/range", `{"key": "Zm9v", "revision": 100}`, false},
		{"/v3/kv/put", `{"key": "", "value": "YmFy"}`, false},
		{"/v3/kv/txn", `{"compare": [{"key": "Zm9v", "result": "EQUAL", "target": "VALUE", "value": "YmF6"}], "success": [{"request_put": {"key": "YmFy", "value": "Zm9v"}}], "failure": [{"request_range": {"key": "Zm9v"}}]}`, false},
		{"/v3/kv/deleterange", `{"key": "Zm9v", "prev_kv": true}`, false},
		{"/v3/kv/deleterange", `{"key": "Zm9v"}`, false},
		{"/v3/lease/grant", `{"TTL": 30}`, false},
		{"/v3/lease/grant", `{"TTL": 30, "ID": 7}`, false},
		{"/v3/lease/grant", `{"TTL": 30, "ID": 7}`, false},
		{"/v3/lease/keepalive", `{"ID": 7}`, false},
		{"/v3/lease/revoke", `{"ID": 8}`, false},
		{"/v3/kv/put", `{"key": "Zm9v", "value": "YmFy", "lease": 9}`, false},
		// Last: a Txn whose compare fails uses up a revision in Tessera,
		// and answers with it (revisions may skip numbers; see the
		// README), so only its revision may differ.
		{"/v3/kv/txn", `{"compare": [{"key": "YmFy", "result": "EQUAL", "target": "VALUE", "value": "bm8="}], "success": [{"request_put": {"key": "YmFy", "value": "Zm9v"}}], "failure": [{"request_range": {"key": "YmFy"}}]}`, true},
	}
	for _, call := range calls {
		got := map[string]string{}
		for name, base := range bases {
			got[name] = gatewayCall(t, base, call.path, call.body, call.anyRevision)
		}
		if got["tessera"] != got["etcd"] {
			t.Errorf("POST %s %s\ntessera: %s\netcd:    %s", call.path, call.body, got["tessera"], got["etcd"])
		}
	}
	// The watch saw the two puts and the delete.
	for i := range 4 {
		if got, want := watches["tessera"](), watches["etcd"](); got != want {
			t.Errorf("watch answer %d\ntessera: %s\netcd:    %s", i, got, want)
		}
	}
}
