package statemachine

import (
	"bytes"
	"encoding/binary"
	"errors"
)

// Pebble key layout. One Pebble holds every range of a node.
//
//	data:        'd' esc(userKey) 0x00 0x01 BE(^revision)      -> KeyValue (Key omitted) or "" (tombstone)
//	lease index: 'l' BE(leaseID) esc(userKey) 0x00 0x01         -> ""
//	metadata:    'm' BE(rangeID) kind [suffix]                  -> see meta.go
//	revisions:   'v' BE(revision) userKey                      -> "" (revindex.go)
//	store:       's' name                                       -> store-wide records
//
// esc replaces each 0x00 of the user key by 0x00 0xFF and the key ends with the
// terminator 0x00 0x01, so the encoding preserves the order of user keys and no
// encoded key is a prefix of another. ^revision makes a key's newest version
// the first one met. Data and lease-index keys carry no range ID: a range's
// data is simply the user keys between its bounds, so a split moves nothing.
const (
	prefixData       byte = 'd'
	prefixLeaseIndex byte = 'l'
	prefixMeta       byte = 'm'
	// prefixReplica keys this node's replica ID in a range: 'r' BE(rangeID).
	// Outside the range's metadata, so a snapshot recovery keeps it.
	prefixReplica byte = 'r'
	// prefixRevIndex keys the revision index: every stored version of a
	// key by its revision (revindex.go).
	prefixRevIndex byte = 'v'
	// prefixStore keys records about the whole store.
	prefixStore byte = 's'

	escByte   byte = 0x00
	escEscape byte = 0xFF
	escTerm   byte = 0x01

	revSuffixLen = 8
)

var errBadKey = errors.New("statemachine: malformed storage key")

// appendEscaped appends esc(userKey) and the terminator.
func appendEscaped(dst, userKey []byte) []byte {
	for {
		i := bytes.IndexByte(userKey, escByte)
		if i < 0 {
			dst = append(dst, userKey...)
			break
		}
		dst = append(dst, userKey[:i+1]...)
		dst = append(dst, escEscape)
		userKey = userKey[i+1:]
	}
	return append(dst, escByte, escTerm)
}

// decodeEscaped decodes an escaped, terminated user key from the start of b and
// returns it (a fresh slice) and the rest of b.
func decodeEscaped(b []byte) (userKey, rest []byte, err error) {
	out := make([]byte, 0, len(b))
	for {
		i := bytes.IndexByte(b, escByte)
		if i < 0 || i+1 >= len(b) {
			return nil, nil, errBadKey
		}
		out = append(out, b[:i]...)
		switch b[i+1] {
		case escEscape:
			out = append(out, escByte)
			b = b[i+2:]
		case escTerm:
			return out, b[i+2:], nil
		default:
			return nil, nil, errBadKey
		}
	}
}

// dataKeyPrefix is the prefix shared by every version of userKey.
func dataKeyPrefix(userKey []byte) []byte {
	return appendEscaped(append(make([]byte, 0, len(userKey)+3+revSuffixLen), prefixData), userKey)
}

// dataKey is the storage key of userKey's version at rev.
func dataKey(userKey []byte, rev int64) []byte {
	return binary.BigEndian.AppendUint64(dataKeyPrefix(userKey), ^uint64(rev))
}

// dataKeyPastVersions sorts after every version of userKey and before the
// next user key.
func dataKeyPastVersions(userKey []byte) []byte {
	k := dataKeyPrefix(userKey)
	k[len(k)-1] = escTerm + 1
	return k
}

// decodeDataKey splits a data key into user key and revision.
func decodeDataKey(k []byte) (userKey []byte, rev int64, err error) {
	if len(k) < 1+2+revSuffixLen || k[0] != prefixData {
		return nil, 0, errBadKey
	}
	userKey, rest, err := decodeEscaped(k[1:])
	if err != nil || len(rest) != revSuffixLen {
		return nil, 0, errBadKey
	}
	return userKey, int64(^binary.BigEndian.Uint64(rest)), nil
}

// dataVersionsPrefix returns the part of a data key before its revision.
func dataVersionsPrefix(k []byte) []byte { return k[:len(k)-revSuffixLen] }

// dataKeyRev returns the revision of a data key.
func dataKeyRev(k []byte) int64 {
	return int64(^binary.BigEndian.Uint64(k[len(k)-revSuffixLen:]))
}

// dataSpanBounds returns the Pebble bounds [lower, upper) holding every
// version of every user key in s.
func dataSpanBounds(s keySpan) (lower, upper []byte) {
	lower = dataKeyPrefix(s.start)
	switch {
	case s.point:
		upper = dataKeyPastVersions(s.start)
	case s.end == nil:
		upper = []byte{prefixData + 1}
	default:
		upper = dataKeyPrefix(s.end)
	}
	return lower, upper
}

// leaseIndexPrefix is the prefix of lease leaseID's index entries.
func leaseIndexPrefix(leaseID int64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixLeaseIndex}, uint64(leaseID))
}

// leaseIndexKey records that userKey is attached to leaseID.
func leaseIndexKey(leaseID int64, userKey []byte) []byte {
	return appendEscaped(leaseIndexPrefix(leaseID), userKey)
}

// leaseIndexBounds returns the Pebble bounds of leaseID's entries whose user
// keys lie in s (a non-point span).
func leaseIndexBounds(leaseID int64, s keySpan) (lower, upper []byte) {
	lower = leaseIndexKey(leaseID, s.start)
	if s.end == nil {
		upper = prefixEnd(leaseIndexPrefix(leaseID))
	} else {
		upper = leaseIndexKey(leaseID, s.end)
	}
	return lower, upper
}

// decodeLeaseIndexKey splits a lease index key.
func decodeLeaseIndexKey(k []byte) (leaseID int64, userKey []byte, err error) {
	if len(k) < 1+8+2 || k[0] != prefixLeaseIndex {
		return 0, nil, errBadKey
	}
	leaseID = int64(binary.BigEndian.Uint64(k[1:9]))
	userKey, rest, err := decodeEscaped(k[9:])
	if err != nil || len(rest) != 0 {
		return 0, nil, errBadKey
	}
	return leaseID, userKey, nil
}

// Metadata kinds, the byte after 'm' BE(rangeID).
//
// A range has metadata in the store once it applied something, recovered a
// snapshot or was created by a split (which writes the child's 's', 'b', 'c'
// and 'l' records in the parent's batch); a range ID with no 'm' key at all is
// free, which is what a split checks for its new range ID.
const (
	metaState  byte = 's' // rangeState
	metaBounds byte = 'b' // bounds, with their generation
	metaLease  byte = 'l' // + BE(leaseID) -> tesserapb.LeaseRecord
	metaHold   byte = 'h' // tesserapb.TxnHold, while a write spanning ranges holds the range
	// metaCoCommits: coCommits, once the range committed a write spanning ranges.
	metaCoCommits byte = 'c'
	// metaIngest: a snapshot's ingest into the range (ingest.go), the
	// snapshot's ID then BE(number of the next chunk).
	metaIngest byte = 'g'
)

// metaPrefix is the prefix of every metadata key of rangeID.
func metaPrefix(rangeID uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixMeta}, rangeID)
}

func metaKey(rangeID uint64, kind byte, suffix ...byte) []byte {
	k := append(metaPrefix(rangeID), kind)
	return append(k, suffix...)
}

func metaLeaseKey(rangeID uint64, leaseID int64) []byte {
	return binary.BigEndian.AppendUint64(metaKey(rangeID, metaLease), uint64(leaseID))
}

// prefixEnd returns the smallest key greater than every key with prefix p
// (nil when there is none).
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xFF {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// splitVersion is the Pebble comparer's Split: the length of the part of a
// storage key that every version of one user key shares. For a data key that
// is all but the revision suffix; any other key (including a data key's
// prefix alone, as iterator bounds use) is all prefix. A data key is
// recognised by its terminator right before the suffix: the escaping leaves
// no other 0x00 0x01 in an encoded user key.
func splitVersion(k []byte) int {
	n := len(k) - revSuffixLen
	if n >= 3 && k[0] == prefixData && k[n-2] == escByte && k[n-1] == escTerm {
		return n
	}
	return len(k)
}

// immediateSuccessor is the Pebble comparer's ImmediateSuccessor: the
// smallest prefix key above prefix a, which must also sort after every key
// with prefix a (NextPrefix seeks there). For a data-key prefix that is the
// key just past its versions (the terminator's last byte raised, as in
// dataKeyPastVersions); an unversioned key has no versions, so a 0x00
// appended is next.
func immediateSuccessor(dst, a []byte) []byte {
	if n := len(a); n >= 3 && a[0] == prefixData && a[n-2] == escByte && a[n-1] == escTerm {
		dst = append(dst, a...)
		dst[len(dst)-1] = escTerm + 1
		return dst
	}
	return append(append(dst, a...), 0)
}

// revIndexKey is the revision index's entry of userKey's version at rev.
// The user key is not escaped: it is the rest of the key, after a revision
// of fixed width, so entries sort by revision, then user key.
func revIndexKey(rev int64, userKey []byte) []byte {
	k := make([]byte, 0, 1+8+len(userKey))
	k = binary.BigEndian.AppendUint64(append(k, prefixRevIndex), uint64(rev))
	return append(k, userKey...)
}

// decodeRevIndexKey splits a revision index key; the user key is k's own
// bytes.
func decodeRevIndexKey(k []byte) (rev int64, userKey []byte, err error) {
	if len(k) < 1+8 || k[0] != prefixRevIndex {
		return 0, nil, errBadKey
	}
	return int64(binary.BigEndian.Uint64(k[1:9])), k[9:], nil
}
