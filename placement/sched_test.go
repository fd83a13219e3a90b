package placement

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// TestSchedule runs the scripts in testdata/sched. Commands:
//
//	cluster [replicas=N]     a new cluster from the node and range lines below
//	update                   node and range lines below change or add to it
//	inflight                 the op lines below are under way
//	schedule [per-node=N] [total=N] [only=name,...]
//	                         one Schedule pass: its ops, and the ranges that
//	                         lost quorum; only= runs just those schedulers
//	simulate [per-node=N] [total=N] [passes=N] [trace] [ranges]
//	                         schedule and apply until nothing is proposed,
//	                         checking every op and membership step; prints
//	                         the passes (trace: their ops), the nodes' counts
//	                         and (ranges) every range
//	show                     the nodes' counts and every range
//
// Lines: "node id=1-3 [state=live|suspect|dead|decommissioning] [disk=N]
// [quota=N] (0 = unlimited)"; "range id=1-12 [replicas=1,2,3] [nonvoters=4]
// [leader=1,2,3] [size=N] [qps=N]" where a list of leaders goes round the
// ranges; op lines as Op.String prints them, without the reason.
func TestSchedule(t *testing.T) {
	datadriven.Walk(t, "testdata/sched", func(t *testing.T, path string) {
		e := &schedEnv{}
		datadriven.RunTest(t, path, e.run)
	})
}

type schedEnv struct {
	c             Cluster
	nextReplicaID uint64
}

func (e *schedEnv) run(t *testing.T, td *datadriven.TestData) string {
	switch td.Cmd {
	case "cluster":
		e.c = Cluster{}
		td.MaybeScanArgs(t, "replicas", &e.c.Replicas)
		e.update(t, td.Input)
		return ""
	case "update":
		e.update(t, td.Input)
		return ""
	case "inflight":
		e.c.InFlight = nil
		for _, line := range inputLines(td.Input) {
			e.c.InFlight = append(e.c.InFlight, parseOp(t, line))
		}
		return ""
	case "schedule":
		limits := scanLimits(t, td)
		ops := scheduleWith(&e.c, limits, pickSchedulers(t, td))
		if err := checkOps(&e.c, limits, ops); err != nil {
			t.Fatalf("%s: invalid op: %v", td.Pos, err)
		}
		var b strings.Builder
		for _, op := range ops {
			fmt.Fprintln(&b, op)
		}
		if len(ops) == 0 {
			fmt.Fprintln(&b, "no ops")
		}
		b.WriteString(renderLost(&e.c))
		return b.String()
	case "simulate":
		return e.simulate(t, td)
	case "show":
		return renderNodes(&e.c) + renderRanges(&e.c)
	}
	t.Fatalf("%s: unknown command %q", td.Pos, td.Cmd)
	return ""
}

func (e *schedEnv) simulate(t *testing.T, td *datadriven.TestData) string {
	s := &sim{c: e.c, limits: scanLimits(t, td), nextReplicaID: e.nextReplicaID}
	for _, op := range e.c.InFlight {
		s.pending = append(s.pending, pendingOp{op: op})
	}
	maxPasses := 100
	td.MaybeScanArgs(t, "passes", &maxPasses)
	var trace strings.Builder
	passes, applied, err := s.run(maxPasses, func(pass int, ops []Op) {
		fmt.Fprintf(&trace, "pass %d:\n", pass)
		for _, op := range ops {
			fmt.Fprintf(&trace, "  %v\n", op)
		}
	})
	if err != nil {
		t.Fatalf("%s: %v\n%s", td.Pos, err, trace.String())
	}
	e.c, e.nextReplicaID = s.c, s.nextReplicaID
	e.c.InFlight = nil

	var b strings.Builder
	if td.HasArg("trace") {
		b.WriteString(trace.String())
	}
	fmt.Fprintf(&b, "stable after %d passes, %d ops\n", passes, applied)
	b.WriteString(renderNodes(&e.c))
	b.WriteString(renderLost(&e.c))
	if td.HasArg("ranges") {
		b.WriteString(renderRanges(&e.c))
	}
	return b.String()
}

// update applies node and range lines, changing only the fields they name.
// A node line without disk= gives the node the size of its replicas.
func (e *schedEnv) update(t *testing.T, input string) {
	var sized []uint64
	for _, line := range inputLines(input) {
		cmd, args := parseArgs(t, line)
		ids := parseIDs(t, args["id"])
		for i, id := range ids {
			switch cmd {
			case "node":
				n := simNode(&e.c, id)
				if n == nil {
					e.c.Nodes = append(e.c.Nodes, Node{ID: id})
					n = &e.c.Nodes[len(e.c.Nodes)-1]
				}
				setNode(t, n, args)
				if _, ok := args["disk"]; !ok {
					sized = append(sized, id)
				}
			case "range":
				r := simRange(&e.c, id)
				if r == nil {
					e.c.Ranges = append(e.c.Ranges, RangeInfo{ID: id})
					r = &e.c.Ranges[len(e.c.Ranges)-1]
				}
				e.setRange(t, r, args, i)
			default:
				t.Fatalf("unknown line %q", line)
			}
		}
	}
	for _, id := range sized {
		n := simNode(&e.c, id)
		n.DiskUsedBytes = 0
		for _, r := range e.c.Ranges {
			if slices.Contains(replicaNodes(&r), id) {
				n.DiskUsedBytes += r.SizeBytes
			}
		}
	}
}

func setNode(t *testing.T, n *Node, args map[string]string) {
	if v, ok := args["state"]; ok {
		i := slices.Index(nodeStateNames[:], v)
		if i < 0 {
			t.Fatalf("unknown node state %q", v)
		}
		n.State = NodeState(i)
	}
	if v, ok := args["disk"]; ok {
		n.DiskUsedBytes = parseInt(t, v)
	}
	if v, ok := args["quota"]; ok {
		n.DiskQuotaBytes = parseInt(t, v)
	}
}

// setRange sets r's fields from args; r is the i-th range of its line.
func (e *schedEnv) setRange(t *testing.T, r *RangeInfo, args map[string]string, i int) {
	_, voters := args["replicas"]
	_, nonVoters := args["nonvoters"]
	if voters || nonVoters {
		r.Replicas = nil
		roles := []struct {
			key  string
			role ReplicaRole
		}{{"replicas", Voter}, {"nonvoters", NonVoter}}
		for _, kind := range roles {
			for _, id := range parseIDs(t, args[kind.key]) {
				e.nextReplicaID++
				r.Replicas = append(r.Replicas, Replica{NodeID: id, ReplicaID: e.nextReplicaID, Role: kind.role})
			}
		}
	}
	if v, ok := args["leader"]; ok {
		leaders := parseIDs(t, v)
		r.Leader = leaders[i%len(leaders)]
	}
	if v, ok := args["size"]; ok {
		r.SizeBytes = parseInt(t, v)
	}
	if v, ok := args["qps"]; ok {
		r.QPS = float64(parseInt(t, v))
	}
}

func parseOp(t *testing.T, line string) Op {
	cmd, args := parseArgs(t, line)
	kind := slices.Index(opKindNames[:], cmd)
	if kind <= 0 {
		t.Fatalf("unknown op %q", cmd)
	}
	op := Op{Kind: OpKind(kind), Range: uint64(parseInt(t, args["range"]))}
	if v, ok := args["from"]; ok {
		op.From = uint64(parseInt(t, v))
	}
	if v, ok := args["to"]; ok {
		op.To = uint64(parseInt(t, v))
	}
	return op
}

func pickSchedulers(t *testing.T, td *datadriven.TestData) []scheduler {
	arg, ok := td.Arg("only")
	if !ok {
		return schedulers
	}
	var run []scheduler
	for _, name := range strings.Split(arg.SingleVal(t), ",") {
		i := slices.IndexFunc(schedulers, func(s scheduler) bool { return s.name == name })
		if i < 0 {
			t.Fatalf("unknown scheduler %q", name)
		}
		run = append(run, schedulers[i])
	}
	return run
}

func scanLimits(t *testing.T, td *datadriven.TestData) Limits {
	var l Limits
	td.MaybeScanArgs(t, "per-node", &l.PerNode)
	td.MaybeScanArgs(t, "total", &l.Total)
	return l
}

func inputLines(input string) []string {
	var lines []string
	for _, line := range strings.Split(input, "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			lines = append(lines, line)
		}
	}
	return lines
}

func parseArgs(t *testing.T, line string) (string, map[string]string) {
	cmd, cmdArgs, err := datadriven.ParseLine(line)
	if err != nil {
		t.Fatal(err)
	}
	args := map[string]string{}
	for _, a := range cmdArgs {
		args[a.Key] = strings.Join(a.Vals, ",")
	}
	return cmd, args
}

// parseIDs reads "4", "1,2,5" or "1-3"; "" is no IDs.
func parseIDs(t *testing.T, s string) []uint64 {
	var ids []uint64
	for _, part := range strings.Split(s, ",") {
		if part == "" {
			continue
		}
		lo, hi, isSpan := strings.Cut(part, "-")
		if !isSpan {
			hi = lo
		}
		for id := parseInt(t, lo); id <= parseInt(t, hi); id++ {
			ids = append(ids, uint64(id))
		}
	}
	return ids
}

func parseInt(t *testing.T, s string) int64 {
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("bad number %q", s)
	}
	return v
}

// renderNodes prints each node's replicas, leaderships, disk and (when any
// range has load) summed load of the ranges it leads.
func renderNodes(c *Cluster) string {
	replicas, leaders, qps := map[uint64]int{}, map[uint64]int{}, map[uint64]float64{}
	anyLoad := false
	for _, r := range c.Ranges {
		for _, id := range replicaNodes(&r) {
			replicas[id]++
		}
		leaders[r.Leader]++
		qps[r.Leader] += r.QPS
		anyLoad = anyLoad || r.QPS > 0
	}
	var b strings.Builder
	for _, n := range sortedNodes(c) {
		fmt.Fprintf(&b, "n%d %s: replicas=%d leaders=%d disk=%d", n.ID, n.State, replicas[n.ID], leaders[n.ID], n.DiskUsedBytes)
		if n.DiskQuotaBytes > 0 {
			fmt.Fprintf(&b, "/%d", n.DiskQuotaBytes)
		}
		if anyLoad {
			fmt.Fprintf(&b, " qps=%.0f", qps[n.ID])
		}
		b.WriteString("\n")
	}
	return b.String()
}

func renderRanges(c *Cluster) string {
	ranges := slices.Clone(c.Ranges)
	slices.SortFunc(ranges, func(a, b RangeInfo) int { return cmp.Compare(a.ID, b.ID) })
	var b strings.Builder
	for _, r := range ranges {
		fmt.Fprintf(&b, "r%d replicas=%s", r.ID, joinIDs(voterNodes(&r)))
		var nonVoters []uint64
		for _, rep := range r.Replicas {
			if rep.Role == NonVoter {
				nonVoters = append(nonVoters, rep.NodeID)
			}
		}
		if len(nonVoters) > 0 {
			fmt.Fprintf(&b, " nonvoters=%s", joinIDs(nonVoters))
		}
		fmt.Fprintf(&b, " leader=%d\n", r.Leader)
	}
	return b.String()
}

func renderLost(c *Cluster) string {
	lost := LostQuorum(c)
	if len(lost) == 0 {
		return ""
	}
	return fmt.Sprintf("lost quorum: ranges %s\n", joinIDs(lost))
}

func joinIDs(ids []uint64) string {
	var parts []string
	for _, id := range ids {
		parts = append(parts, strconv.FormatUint(id, 10))
	}
	return strings.Join(parts, ",")
}

func sortedNodes(c *Cluster) []Node {
	nodes := slices.Clone(c.Nodes)
	slices.SortFunc(nodes, func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	return nodes
}

// TestKeepLeader: a range marked KeepLeader is never chosen to even out
// leaders, another range led by the same node is.
func TestKeepLeader(t *testing.T) {
	c := &Cluster{Replicas: 3}
	for id := uint64(1); id <= 3; id++ {
		c.Nodes = append(c.Nodes, Node{ID: id, State: NodeLive})
	}
	voters := []Replica{{NodeID: 1, ReplicaID: 1}, {NodeID: 2, ReplicaID: 2}, {NodeID: 3, ReplicaID: 3}}
	for id := uint64(1); id <= 3; id++ {
		c.Ranges = append(c.Ranges, RangeInfo{ID: id, Replicas: voters, Leader: 1, KeepLeader: id == 1})
	}
	ops := Schedule(c, Limits{})
	if len(ops) == 0 {
		t.Fatal("no leadership moved off the node leading every range")
	}
	for _, op := range ops {
		if op.Range == 1 {
			t.Fatalf("the KeepLeader range's leadership moved: %v", ops)
		}
	}
}
