package statemachine

import (
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// Error codes carried in tesserapb.Result.code (and sm.Result.Value). They are
// part of the replicated log's meaning: never renumber them.
const (
	CodeOK             int32 = 0
	CodeCompacted      int32 = 1
	CodeFutureRev      int32 = 2
	CodeLeaseNotFound  int32 = 3
	CodeLeaseExists    int32 = 4
	CodeKeyNotFound    int32 = 5
	CodeDuplicateKey   int32 = 6
	CodeStaleRevision  int32 = 7
	CodeEmptyKey       int32 = 8
	CodeWrongRange     int32 = 9
	CodeInvalidCommand int32 = 10
	CodeUnavailable    int32 = 11
	CodeInvalidSplit   int32 = 12
	CodeLeaseProofOld  int32 = 13
	CodeStaleLeader    int32 = 14
	CodeRangeHeld      int32 = 15
	CodeNotHeld        int32 = 16
	CodeHoldConflict   int32 = 17
	CodeUnknown        int32 = -1 // an error that is none of this package's sentinels
)

// cmdError is a sentinel error of this package. Commands that fail with one of
// these change nothing; any other error from Update is fatal (I/O).
type cmdError struct {
	code int32
	msg  string
}

func (e *cmdError) Error() string { return e.msg }

// The sentinels. Each comment names the etcd error the gRPC edge maps it to.
var (
	// ErrCompacted maps to rpctypes.ErrGRPCCompacted.
	ErrCompacted error = &cmdError{CodeCompacted, rpctypes.ErrorDesc(rpctypes.ErrGRPCCompacted)}
	// ErrFutureRev maps to rpctypes.ErrGRPCFutureRev.
	ErrFutureRev error = &cmdError{CodeFutureRev, rpctypes.ErrorDesc(rpctypes.ErrGRPCFutureRev)}
	// ErrLeaseNotFound maps to rpctypes.ErrGRPCLeaseNotFound.
	ErrLeaseNotFound error = &cmdError{CodeLeaseNotFound, rpctypes.ErrorDesc(rpctypes.ErrGRPCLeaseNotFound)}
	// ErrLeaseExists maps to rpctypes.ErrGRPCLeaseExist.
	ErrLeaseExists error = &cmdError{CodeLeaseExists, rpctypes.ErrorDesc(rpctypes.ErrGRPCLeaseExist)}
	// ErrKeyNotFound maps to rpctypes.ErrGRPCKeyNotFound (put with
	// ignore_value/ignore_lease on a missing key).
	ErrKeyNotFound error = &cmdError{CodeKeyNotFound, rpctypes.ErrorDesc(rpctypes.ErrGRPCKeyNotFound)}
	// ErrDuplicateKey maps to rpctypes.ErrGRPCDuplicateKey.
	ErrDuplicateKey error = &cmdError{CodeDuplicateKey, rpctypes.ErrorDesc(rpctypes.ErrGRPCDuplicateKey)}
	// ErrStaleRevision has no etcd counterpart: the command's revision is not
	// above the range's last applied command revision. Nothing changed; the
	// shard retries with a fresh revision.
	ErrStaleRevision error = &cmdError{CodeStaleRevision, "tessera: command revision is not above the range's last applied revision"}
	// ErrEmptyKey maps to rpctypes.ErrGRPCEmptyKey.
	ErrEmptyKey error = &cmdError{CodeEmptyKey, rpctypes.ErrorDesc(rpctypes.ErrGRPCEmptyKey)}
	// ErrWrongRange has no etcd counterpart: the request touches keys outside
	// the range's bounds; the router refreshes its descriptors and retries.
	ErrWrongRange error = &cmdError{CodeWrongRange, "tessera: request touches keys outside the range's bounds"}
	// ErrInvalidCommand has no etcd counterpart (an internal error at the edge,
	// codes.Internal): the command could not be decoded or is malformed.
	ErrInvalidCommand error = &cmdError{CodeInvalidCommand, "tessera: invalid command"}
	// ErrUnavailable is returned by reads while the range is closed or is
	// recovering from a snapshot (codes.Unavailable at the edge; retry).
	ErrUnavailable error = &cmdError{CodeUnavailable, "tessera: range state machine is closed or recovering from a snapshot"}
	// ErrInvalidSplit has no etcd counterpart (codes.FailedPrecondition at
	// the edge; the splitter re-reads the descriptor): the split key is not
	// strictly inside the range, or the new range ID is zero, the range's own
	// or already taken in this store. Nothing changed.
	ErrInvalidSplit error = &cmdError{CodeInvalidSplit, "tessera: invalid split: the split key is outside the range or on its boundary, or the new range ID is not free"}
	// ErrLeaseProofOld has no etcd counterpart: a lease attach was proved at
	// a revision at or below a lease revocation the range applied since.
	// Nothing changed; the router proves the lease again.
	ErrLeaseProofOld error = &cmdError{CodeLeaseProofOld, "tessera: lease attach refused: the range revoked a lease after the attach's proof revision"}
	// ErrStaleLeader has no etcd counterpart: the command was proposed by a
	// leader of an earlier term than the range's latest leadership barrier
	// (Command.leadership_term), so its revision may be below reads the
	// range's current leader fenced. Nothing changed; the shard proposes a
	// new leadership barrier, or the router goes to the new leader.
	ErrStaleLeader error = &cmdError{CodeStaleLeader, "tessera: command proposed under an earlier leadership of the range"}
	// ErrRangeHeld has no etcd counterpart: the range is held by a write
	// spanning ranges (TxnHoldCommand) until that write commits or aborts,
	// and refuses other commands writing keys, compactions, lease
	// revocations, splits and other holds meanwhile. Nothing changed; try
	// again.
	ErrRangeHeld error = &cmdError{CodeRangeHeld, "tessera: the range is held by a write spanning ranges"}
	// ErrNotHeld has no etcd counterpart: a TxnCommitCommand for a write
	// the range is not held for (it was aborted here). Nothing changed.
	ErrNotHeld error = &cmdError{CodeNotHeld, "tessera: the range is not held for this write"}
	// ErrHoldConflict has no etcd counterpart: a TxnHoldCommand met the hold
	// of another write spanning ranges. Nothing changed; the coordinator
	// releases its other holds and tries again after a pause, so two writes
	// holding ranges in opposite orders do not wait for each other.
	ErrHoldConflict error = &cmdError{CodeHoldConflict, "tessera: the range is held by another write spanning ranges"}
)

var sentinels = []error{
	ErrCompacted, ErrFutureRev, ErrLeaseNotFound, ErrLeaseExists, ErrKeyNotFound,
	ErrDuplicateKey, ErrStaleRevision, ErrEmptyKey, ErrWrongRange, ErrInvalidCommand,
	ErrUnavailable, ErrInvalidSplit, ErrLeaseProofOld, ErrStaleLeader, ErrRangeHeld, ErrNotHeld,
	ErrHoldConflict,
}

// ErrorCode returns the code of err's sentinel: 0 for nil, CodeUnknown for an
// error that wraps none of this package's sentinels.
func ErrorCode(err error) int32 {
	if err == nil {
		return CodeOK
	}
	var ce *cmdError
	if errors.As(err, &ce) {
		return ce.code
	}
	return CodeUnknown
}

// isCommandError reports whether err is a command's (deterministic) failure
// rather than a fatal storage error.
func isCommandError(err error) bool {
	var ce *cmdError
	return errors.As(err, &ce)
}

// resultError is an error rebuilt from a Result: its text is the original
// message, and errors.Is matches the sentinel.
type resultError struct {
	sentinel error
	msg      string
}

func (e *resultError) Error() string { return e.msg }
func (e *resultError) Unwrap() error { return e.sentinel }

// ErrorFromResult returns nil when res.code is 0, otherwise the code's
// sentinel (wrapped so that its text is res.message).
func ErrorFromResult(res *tesserapb.Result) error {
	if res == nil || res.GetCode() == CodeOK {
		return nil
	}
	for _, s := range sentinels {
		if s.(*cmdError).code == res.GetCode() {
			if res.GetMessage() == "" || res.GetMessage() == s.Error() {
				return s
			}
			return &resultError{sentinel: s, msg: res.GetMessage()}
		}
	}
	return fmt.Errorf("tessera: unknown state machine error code %d: %s", res.GetCode(), res.GetMessage())
}

// errorf wraps a sentinel with detail.
func errorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}
