package shard

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// TestProposalCommandCopiesEveryField: proposalCommand copies Command's
// fields by name, so a field added to Command must be added there too; this
// fails until it is.
func TestProposalCommandCopiesEveryField(t *testing.T) {
	cmd := &tesserapb.Command{Revision: 7, LeadershipTerm: 3,
		Op: &tesserapb.Command_Txn{Txn: &tesserapb.TxnCommand{}}}
	if got := proposalCommand(cmd); !proto.Equal(got, cmd) {
		t.Fatalf("proposalCommand(%v) = %v", cmd, got)
	}
	fields := cmd.ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		if f.ContainingOneof() != nil {
			continue // the operation, shared whole
		}
		switch f.Name() {
		case "revision", "leadership_term":
		default:
			t.Errorf("Command has a field %q that proposalCommand does not copy", f.Name())
		}
	}
	// The copy is apart from cmd: the proposer's changes stay off it.
	p := proposalCommand(cmd)
	p.Revision, p.LeadershipTerm = 99, 98
	if cmd.Revision != 7 || cmd.LeadershipTerm != 3 {
		t.Fatalf("a change to the proposal's copy reached the caller's command: %v", cmd)
	}
}
