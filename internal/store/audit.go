package store

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"time"
)

// HashEntry returns the chain hash of e: SHA-256 over the previous entry's
// hash and e's Seq, Time (UTC, nanoseconds), Action, Identity, Outcome and
// Detail, each length-prefixed so no two entries share an encoding.
func HashEntry(prevHash string, e AuditEntry) string {
	h := sha256.New()
	var n [8]byte
	field := func(s string) {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field(prevHash)
	binary.BigEndian.PutUint64(n[:], uint64(e.Seq))
	h.Write(n[:])
	field(e.Time.UTC().Format(time.RFC3339Nano))
	field(e.Action)
	field(e.Identity)
	field(e.Outcome)
	field(e.Detail)
	return hex.EncodeToString(h.Sum(nil))
}

// VerifyAuditChain checks that entries form an unbroken hash chain starting
// at the first entry of the log. It returns an error wrapping
// ErrAuditTampered that names the first entry that does not fit.
func VerifyAuditChain(entries []AuditEntry) error {
	return VerifyAuditChainProgress(entries, nil)
}

// progressEvery is how many entries VerifyAuditChainProgress verifies
// between two calls of its progress function.
const progressEvery = 1024

// VerifyAuditChainProgress is VerifyAuditChain that reports how many
// entries it has verified to progress (when not nil), every
// progressEvery entries and once at the end of an unbroken chain, so a
// long verification can show that it advances.
func VerifyAuditChainProgress(entries []AuditEntry, progress func(verified int)) error {
	prev := ""
	for i, e := range entries {
		if progress != nil && i > 0 && i%progressEvery == 0 {
			progress(i)
		}
		if e.Seq != int64(i+1) {
			return fmt.Errorf("%w: entry %d has sequence number %d (an entry was removed or inserted)", ErrAuditTampered, i+1, e.Seq)
		}
		if e.PrevHash != prev {
			return fmt.Errorf("%w: entry %d does not point at entry %d", ErrAuditTampered, e.Seq, e.Seq-1)
		}
		if want := HashEntry(prev, e); e.Hash != want {
			return fmt.Errorf("%w: entry %d (%s %s) was altered", ErrAuditTampered, e.Seq, e.Action, e.Identity)
		}
		prev = e.Hash
	}
	if progress != nil {
		progress(len(entries))
	}
	return nil
}
