package tests

import (
	"fmt"
	"testing"
	"time"

	"github.com/tesserakv/tessera/internal/testcluster"
)

// TestRevisionsGrowAcrossMetaLeaderChanges: one writer puts sequentially
// through every node in turn while the meta range's leadership (the revision
// oracle) moves around the cluster; each write starts after the previous one
// was acknowledged, so each must get a larger revision.
func TestRevisionsGrowAcrossMetaLeaderChanges(t *testing.T) {
	c := testcluster.Start(t, 3)
	ctx := ctxT(t)
	last := int64(0)
	moves := 0
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < 600 && time.Now().Before(deadline); i++ {
		node := c.Nodes[i%len(c.Nodes)]
		resp, err := c.Client(node.ClientURL).Put(ctx, fmt.Sprintf("oracle/%d", i%10), fmt.Sprint(i))
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if resp.Header.Revision <= last {
			t.Fatalf("write %d through %s got revision %d, not above the previous %d", i, node.Config.Name, resp.Header.Revision, last)
		}
		last = resp.Header.Revision
		if i%100 == 50 {
			leader := c.Nodes[0].Server.Testing().MetaLeader()
			target := leader%3 + 1
			if err := c.Nodes[0].Server.Testing().TransferMetaLeadership(target); err == nil {
				moves++
			}
		}
	}
	if moves == 0 {
		t.Fatal("the meta leadership was never moved; the test tested nothing")
	}
}
