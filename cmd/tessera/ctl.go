package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tesserakv/tessera/internal/clientflags"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

const ctlUsage = `Usage: tessera ctl [flags] COMMAND [ARGS]

Administers a running Tessera cluster.

Commands:
  ranges [--json]      list the ranges: id, start, end, replicas, leader, size, QPS
  split KEY            split the range holding KEY at KEY
  nodes [--json]       list the nodes: id, name, addresses, state, replicas, leaders, disk used
  decommission NODE    move every replica off NODE (its name or ID) before it leaves
  restore FILE --data-dir DIR
                       prepare a new member's data directory from an etcd v3 snapshot
                       file (etcdctl snapshot save's, from etcd or Tessera); every
                       member of the new cluster is prepared so, member 1 loads it
  import-etcd-snapshot FILE --data-dir DIR
                       the same as restore
  export-etcd-snapshot FILE
                       save a snapshot of the cluster in etcd's format, which
                       etcdutl snapshot restore restores into etcd

Flags:
`

// runCtl runs `tessera ctl ...` and returns the process exit code.
func runCtl(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tessera ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	endpoints := fs.String("endpoints", "127.0.0.1:2379", "comma-separated gRPC endpoints (host:port or http://host:port)")
	timeout := fs.Duration("command-timeout", 10*time.Second, "timeout for the command")
	asJSON := fs.Bool("json", false, "print JSON (ranges, nodes)")
	dataDir := fs.String("data-dir", "", "the data directory to prepare (restore, import-etcd-snapshot)")
	skipHashCheck := fs.Bool("skip-hash-check", false, "restore a database file without its trailing hash (copied from a member's data directory)")
	user := fs.String("user", "", "username[:password] for authentication, as etcdctl's")
	var tlsFlags clientflags.TLS
	tlsFlags.Register(fs)
	password := fs.String("password", "", "password for authentication (if this option is used, --user option shouldn't include password)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), ctlUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	// Flags may follow the command and its arguments, as in etcdctl
	// (`ranges --json`, `restore FILE --data-dir DIR`).
	var rest []string
	for args := fs.Args(); len(args) > 0; args = fs.Args() {
		rest = append(rest, args[0])
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
	}
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	creds, err := parseUser(*user, *password)
	var tlsCfg *tls.Config
	if err == nil {
		tlsCfg, err = tlsFlags.Config(*endpoints)
	}
	if err != nil {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 2
	}
	switch rest[0] {
	case "restore", "import-etcd-snapshot":
		if err := runRestore(rest[1:], *dataDir, *skipHashCheck, stdout); err != nil {
			fmt.Fprintf(stderr, "Error: %v\n", err)
			return 1
		}
		return 0
	case "export-etcd-snapshot":
		// A snapshot takes as long as the data takes to read: no timeout
		// unless one is given.
		ctx := context.Background()
		if set := flagSet(fs, "command-timeout"); set {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, *timeout)
			defer cancel()
		}
		if err := runExport(ctx, rest[1:], *endpoints, creds, tlsCfg, stdout); err != nil {
			fmt.Fprintf(stderr, "Error: %v\n", describeErr(err))
			return 1
		}
		return 0
	}
	transportCreds := insecure.NewCredentials()
	if tlsCfg != nil {
		transportCreds = credentials.NewTLS(tlsCfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var firstErr error
	for _, ep := range strings.Split(*endpoints, ",") {
		ep = strings.TrimSpace(ep)
		if i := strings.Index(ep, "://"); i >= 0 {
			ep = ep[i+3:]
		}
		cc, err := grpc.NewClient(ep, grpc.WithTransportCredentials(transportCreds))
		if err != nil {
			firstErr = err
			continue
		}
		callCtx, err := creds.login(ctx, cc)
		code := 1
		if err == nil {
			code, err = ctlCommand(callCtx, tesserapb.NewInternalClient(cc), rest, *asJSON, stdout)
		}
		cc.Close()
		if err == nil {
			return code
		}
		if firstErr == nil {
			firstErr = err
		}
		if st, ok := status.FromError(err); ok && st.Code().String() != "Unavailable" {
			break // an answer, not a dead endpoint: do not try others
		}
	}
	fmt.Fprintf(stderr, "Error: %v\n", describeErr(firstErr))
	return 1
}

// ctlUser is --user and --password.
type ctlUser struct{ user, password string }

func parseUser(user, password string) (ctlUser, error) {
	name, pw, err := clientflags.ParseUser(user, password)
	return ctlUser{user: name, password: pw}, err
}

// login authenticates on cc, when a user is given, and returns ctx with
// the token every call carries.
func (c ctlUser) login(ctx context.Context, cc *grpc.ClientConn) (context.Context, error) {
	if c.user == "" {
		return ctx, nil
	}
	resp, err := pb.NewAuthClient(cc).Authenticate(ctx, &pb.AuthenticateRequest{Name: c.user, Password: c.password})
	if err != nil {
		return ctx, err
	}
	return metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, resp.Token), nil
}

// flagSet reports whether the flag name was given.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func describeErr(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}

func ctlCommand(ctx context.Context, c tesserapb.InternalClient, args []string, asJSON bool, out io.Writer) (int, error) {
	switch args[0] {
	case "ranges":
		resp, err := c.ListRanges(ctx, &tesserapb.ListRangesRequest{})
		if err != nil {
			return 1, err
		}
		if asJSON {
			return 0, printRangesJSON(out, resp.Ranges)
		}
		printRangesTable(out, resp.Ranges)
		return 0, nil
	case "split":
		if len(args) != 2 {
			return 2, fmt.Errorf("split takes one argument, the key to split at")
		}
		resp, err := c.SplitRange(ctx, &tesserapb.SplitRangeRequest{SplitKey: []byte(args[1])})
		if err != nil {
			return 1, err
		}
		fmt.Fprintf(out, "split range %d at %q: range %d [%q, %q) and range %d [%q, %q)\n",
			resp.Left.GetRangeId(), args[1],
			resp.Left.GetRangeId(), resp.Left.GetStartKey(), endOrInf(resp.Left.GetEndKey()),
			resp.Right.GetRangeId(), resp.Right.GetStartKey(), endOrInf(resp.Right.GetEndKey()))
		return 0, nil
	case "nodes":
		resp, err := c.ListNodes(ctx, &tesserapb.ListNodesRequest{})
		if err != nil {
			return 1, err
		}
		if asJSON {
			return 0, printNodesJSON(out, resp.Nodes)
		}
		printNodesTable(out, resp.Nodes)
		return 0, nil
	case "decommission":
		if len(args) != 2 {
			return 2, fmt.Errorf("decommission takes one argument, the node's name or ID")
		}
		resp, err := c.Decommission(ctx, &tesserapb.DecommissionRequest{Node: args[1]})
		if err != nil {
			return 1, err
		}
		fmt.Fprintf(out, "node %d is decommissioning: its replicas move to the other nodes (see tessera ctl nodes)\n", resp.NodeId)
		return 0, nil
	default:
		return 2, fmt.Errorf("unknown command %q (want ranges, split, nodes or decommission)", args[0])
	}
}

// nodeJSON is one node in `tessera ctl nodes --json`.
type nodeJSON struct {
	ID            uint64   `json:"id"`
	Name          string   `json:"name"`
	RaftAddress   string   `json:"raft_address"`
	ClientURLs    []string `json:"client_urls"`
	State         string   `json:"state"`
	Replicas      uint32   `json:"replicas"`
	Leaders       uint32   `json:"leaders"`
	DiskUsedBytes int64    `json:"disk_used_bytes"`
}

func printNodesJSON(out io.Writer, nodes []*tesserapb.NodeStatus) error {
	list := make([]nodeJSON, 0, len(nodes))
	for _, n := range nodes {
		list = append(list, nodeJSON{ID: n.NodeId, Name: n.Name, RaftAddress: n.RaftAddress, ClientURLs: n.ClientUrls,
			State: n.State, Replicas: n.Replicas, Leaders: n.Leaders, DiskUsedBytes: n.DiskUsedBytes})
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(list)
}

func printNodesTable(out io.Writer, nodes []*tesserapb.NodeStatus) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tPEER\tCLIENT\tSTATE\tREPLICAS\tLEADERS\tDISK")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", n.NodeId, n.Name, n.RaftAddress, strings.Join(n.ClientUrls, ","), n.State, n.Replicas, n.Leaders, n.DiskUsedBytes)
	}
	tw.Flush()
}

func endOrInf(end []byte) string {
	if len(end) == 0 {
		return "∞"
	}
	return string(end)
}

// rangeJSON is one range in `tessera ctl ranges --json`.
type rangeJSON struct {
	ID         uint64   `json:"id"`
	Start      string   `json:"start"`
	End        string   `json:"end"`
	Replicas   []uint64 `json:"replicas"`
	Leader     uint64   `json:"leader"`
	SizeBytes  int64    `json:"size_bytes"`
	QPS        float64  `json:"qps"`
	Generation uint64   `json:"generation"`
}

func printRangesJSON(out io.Writer, ranges []*tesserapb.RangeInfo) error {
	list := make([]rangeJSON, 0, len(ranges))
	for _, r := range ranges {
		list = append(list, rangeJSON{ID: r.RangeId, Start: string(r.StartKey), End: string(r.EndKey), Replicas: r.ReplicaNodeIds,
			Leader: r.LeaderNodeId, SizeBytes: r.SizeBytes, QPS: r.Qps, Generation: r.Generation})
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(list)
}

func printRangesTable(out io.Writer, ranges []*tesserapb.RangeInfo) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTART\tEND\tREPLICAS\tLEADER\tSIZE\tQPS")
	for _, r := range ranges {
		var reps []string
		for _, id := range r.ReplicaNodeIds {
			reps = append(reps, strconv.FormatUint(id, 10))
		}
		fmt.Fprintf(tw, "%d\t%q\t%s\t%s\t%d\t%d\t%.1f\n", r.RangeId, r.StartKey, quoteEnd(r.EndKey), strings.Join(reps, ","), r.LeaderNodeId, r.SizeBytes, r.Qps)
	}
	tw.Flush()
}

func quoteEnd(end []byte) string {
	if len(end) == 0 {
		return "∞"
	}
	return strconv.Quote(string(end))
}
