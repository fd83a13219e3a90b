package tests

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// TestEtcdctl drives a tessera subprocess with etcdctl v3.7.3, as a user would.
func TestEtcdctl(t *testing.T) {
	p := startProcess(t, t.TempDir())
	ep := p.clientURL
	run := func(stdin string, args ...string) string {
		t.Helper()
		out, err := etcdctl(t, ep, stdin, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	expect := func(got, want string) {
		t.Helper()
		if strings.TrimSpace(got) != strings.TrimSpace(want) {
			t.Fatalf("etcdctl printed:\n%s\nwant:\n%s", got, want)
		}
	}

	expect(run("", "put", "a", "1"), "OK")
	expect(run("", "get", "a"), "a\n1")
	var getJSON struct {
		Header struct {
			Revision int64 `json:"revision"`
		} `json:"header"`
		Kvs []struct {
			Key     []byte `json:"key"`
			Value   []byte `json:"value"`
			Version int64  `json:"version"`
		} `json:"kvs"`
		Count int64 `json:"count"`
	}
	if err := json.Unmarshal([]byte(run("", "get", "a", "-w", "json")), &getJSON); err != nil {
		t.Fatal(err)
	}
	if getJSON.Count != 1 || string(getJSON.Kvs[0].Key) != "a" || string(getJSON.Kvs[0].Value) != "1" || getJSON.Kvs[0].Version != 1 {
		t.Fatalf("get -w json = %+v", getJSON)
	}
	firstRev := getJSON.Header.Revision

	for _, k := range []string{"p/1", "p/2", "p/3"} {
		run("", "put", k, "v"+k[2:])
	}
	expect(run("", "get", "p/", "--prefix", "--keys-only"), "p/1\n\np/2\n\np/3")
	expect(run("", "get", "p/", "--prefix", "--limit=1"), "p/1\nv1")
	expect(run("", "get", "p/", "--prefix", "--sort-by=KEY", "--order=DESCEND", "--limit=1"), "p/3\nv3")
	run("", "put", "a", "2")
	expect(run("", "get", "a", "--rev", itoa(firstRev)), "a\n1")

	// txn from stdin: compares, blank line, success ops, blank line, failure ops.
	expect(run("value(\"a\") = \"2\"\n\nput t yes\n\nput t no\n\n", "txn"), "SUCCESS\n\nOK")
	expect(run("", "get", "t", "--print-value-only"), "yes")
	expect(run("value(\"a\") = \"9\"\n\nput t yes\n\nput t no\n\n", "txn"), "FAILURE\n\nOK")
	expect(run("", "get", "t", "--print-value-only"), "no")

	expect(run("", "del", "p/", "--prefix"), "3")
	expect(run("", "get", "p/", "--prefix"), "")

	// Leases.
	grant := run("", "lease", "grant", "30")
	m := regexp.MustCompile(`lease ([0-9a-f]+) granted with TTL\(30s\)`).FindStringSubmatch(grant)
	if m == nil {
		t.Fatalf("lease grant printed %q", grant)
	}
	id := m[1]
	expect(run("", "put", "--lease="+id, "leased", "v"), "OK")
	if out := run("", "lease", "timetolive", id, "--keys"); !strings.Contains(out, "attached keys([leased])") {
		t.Fatalf("lease timetolive printed %q", out)
	}
	if out := run("", "lease", "keep-alive", "--once", id); !strings.Contains(out, "keepalived with TTL(30)") {
		t.Fatalf("lease keep-alive printed %q", out)
	}
	if out := run("", "lease", "list"); !strings.Contains(out, id) {
		t.Fatalf("lease list printed %q", out)
	}
	if out := run("", "lease", "revoke", id); !strings.Contains(out, "revoked") {
		t.Fatalf("lease revoke printed %q", out)
	}
	expect(run("", "get", "leased"), "")

	// Compaction, then a read below it fails with etcd's message.
	if out := run("", "compact", itoa(firstRev+1)); !strings.Contains(out, "compacted revision") {
		t.Fatalf("compact printed %q", out)
	}
	if _, err := etcdctl(t, ep, "", "get", "a", "--rev", itoa(firstRev)); err == nil || !strings.Contains(err.Error(), "required revision has been compacted") {
		t.Fatalf("get below the compaction: %v", err)
	}

	// endpoint status and member list.
	status := run("", "endpoint", "status", "-w", "json")
	if !strings.Contains(status, `"version":"3.7`) || !strings.Contains(status, `"leader":`) {
		t.Fatalf("endpoint status printed %s", status)
	}
	if out := run("", "member", "list"); !strings.Contains(out, "started, default,") || !strings.Contains(out, ep) {
		t.Fatalf("member list printed %q", out)
	}
	if out := run("", "endpoint", "health"); !strings.Contains(out, "is healthy") {
		t.Fatalf("endpoint health printed %q", out)
	}
	if out := run("", "endpoint", "hashkv", "-w", "json"); !strings.Contains(out, `"hash":`) || !strings.Contains(out, `"compact_revision":`+itoa(firstRev+1)) {
		t.Fatalf("endpoint hashkv printed %s", out)
	}
	if out := run("", "defrag"); !strings.Contains(out, "Finished defragmenting etcd member["+ep) {
		t.Fatalf("defrag printed %q", out)
	}
	// Bad input through etcdctl gets etcd's messages.
	if _, err := etcdctl(t, ep, "", "put", "", "v"); err == nil || !strings.Contains(err.Error(), "key is not provided") {
		t.Fatalf("put empty key: %v", err)
	}
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
