package statemachine

import (
	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// Members: each replica's node announces how peers and clients reach it; the
// attributes are upserted by replica ID under the range's metadata.

// applyMemberAttrs upserts a member's attributes.
func (a *applier) applyMemberAttrs(attrs *tesserapb.MemberAttrs) (proto.Message, error) {
	if attrs == nil || attrs.GetReplicaId() == 0 {
		return nil, errorf(ErrInvalidCommand, "member attributes without a replica ID")
	}
	v, err := proto.Marshal(attrs)
	if err != nil {
		return nil, err
	}
	return nil, a.b.Set(metaMemberKey(a.rangeID, attrs.GetReplicaId()), v, nil)
}

// loadMembers reads a range's member attributes, ordered by replica ID.
func loadMembers(r pebble.Reader, rangeID uint64) ([]*tesserapb.MemberAttrs, error) {
	var out []*tesserapb.MemberAttrs
	err := iterPrefix(r, metaKey(rangeID, metaMember), func(_, v []byte) error {
		m := &tesserapb.MemberAttrs{}
		if err := proto.Unmarshal(v, m); err != nil {
			return err
		}
		out = append(out, m)
		return nil
	})
	return out, err
}
