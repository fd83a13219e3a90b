package bench

import (
	"math/rand/v2"
	"strconv"
	"strings"
)

// KeyGen names the keys a workload writes or reads: prefix followed by a
// zero-padded decimal number, padded so the key is exactly sizeBytes long when
// the number fits (longer otherwise; Config.Validate rejects sizes too small
// for the key space).
type KeyGen struct {
	Prefix    string
	SizeBytes int
	// Space is the number of distinct keys; 0 means unbounded (sequential
	// keys only).
	Space int64
	// Sequential keys count up with the request sequence number (wrapping at
	// Space); otherwise keys are uniformly random in [0, Space).
	Sequential bool
}

// Key returns the key for request seq.
func (g KeyGen) Key(seq int64, rng *rand.Rand) string {
	return formatKey(g.Prefix, g.Index(seq, rng), g.SizeBytes)
}

// Index returns the key number for request seq.
func (g KeyGen) Index(seq int64, rng *rand.Rand) int64 {
	switch {
	case g.Sequential && g.Space > 0:
		return seq % g.Space
	case g.Sequential:
		return seq
	default:
		return rng.Int64N(max(g.Space, 1))
	}
}

// KeyAt returns key number n.
func (g KeyGen) KeyAt(n int64) string { return formatKey(g.Prefix, n, g.SizeBytes) }

// PrefixEnd is the end of the range holding every key of the generator.
func (g KeyGen) PrefixEnd() string { return prefixEnd(g.Prefix) }

// minKeySize is the smallest key size that holds every key of a space of
// n keys under prefix.
func minKeySize(prefix string, n int64) int {
	return len(prefix) + len(strconv.FormatInt(max(n-1, 0), 10))
}

func formatKey(prefix string, n int64, size int) string {
	digits := strconv.FormatInt(n, 10)
	pad := size - len(prefix) - len(digits)
	if pad <= 0 {
		return prefix + digits
	}
	return prefix + strings.Repeat("0", pad) + digits
}

// prefixEnd returns the smallest key greater than every key starting with
// prefix, as clientv3.GetPrefixRangeEnd does.
func prefixEnd(prefix string) string {
	end := []byte(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return string(end[:i+1])
		}
	}
	return "\x00"
}

// ValueGen hands out values of one size cut at random offsets from a pool of
// random printable bytes, so values differ from each other (a store that
// compresses blocks gets no free ride from identical values) without costing
// a random fill per request.
type ValueGen struct {
	pool      string
	sizeBytes int
}

const valuePoolSlackBytes = 64 << 10

// NewValueGen returns a generator of sizeBytes-long values.
func NewValueGen(sizeBytes int, seed uint64) ValueGen {
	rng := rand.New(rand.NewPCG(seed, 0x7e55e7a))
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	pool := make([]byte, sizeBytes+valuePoolSlackBytes)
	for i := range pool {
		pool[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return ValueGen{pool: string(pool), sizeBytes: sizeBytes}
}

// Value returns a value of the generator's size.
func (v ValueGen) Value(rng *rand.Rand) string { return v.Sized(v.sizeBytes, rng) }

// Sized returns a value of sizeBytes (at most the generator's size plus its
// slack).
func (v ValueGen) Sized(sizeBytes int, rng *rand.Rand) string {
	sizeBytes = min(sizeBytes, len(v.pool))
	off := rng.IntN(len(v.pool) - sizeBytes + 1)
	return v.pool[off : off+sizeBytes]
}
