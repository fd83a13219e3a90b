package tests

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// metricRef matches the metric names a PromQL expression uses.
var metricRef = regexp.MustCompile(`\b(?:etcd|tessera|grpc|process|go)_[a-z0-9_]+\b`)

// TestDeployMetricsExist: every metric the alert rules and the Grafana
// dashboard in deploy/ use is one a node exports (histograms by their
// _bucket, _count and _sum series), and the dashboard is JSON.
func TestDeployMetricsExist(t *testing.T) {
	c := testcluster.Start(t, 1)
	cli := c.Client()
	ctx := ctxT(t)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Get(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, c.Nodes[0].ClientURL+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	exported := func(name string) bool {
		if _, ok := families[name]; ok {
			return true
		}
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if base, ok := strings.CutSuffix(name, suffix); ok {
				if _, ok := families[base]; ok {
					return true
				}
			}
		}
		return false
	}

	dashboard, err := os.ReadFile("../deploy/grafana/tessera-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(dashboard, &d); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	var exprs []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	alerts, err := os.ReadFile("../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	exprs = append(exprs, string(alerts))
	seen := 0
	for _, e := range exprs {
		for _, name := range metricRef.FindAllString(e, -1) {
			if strings.HasPrefix(name, "grpc_") && !strings.HasPrefix(name, "grpc_server_") {
				continue // a label: grpc_method, grpc_code, …
			}
			seen++
			if !exported(name) {
				t.Errorf("deploy/ uses %s, which a node does not export", name)
			}
		}
	}
	if seen < 20 {
		t.Fatalf("only %d metric references found in deploy/", seen)
	}
}
