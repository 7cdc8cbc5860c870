package cli

import (
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
)

// What --json prints for the values whose own types have no JSON names of
// their own (the store's) or keep Go names on the wire (meshapi's
// RevokedCert). Every --json key is snake_case.

// revocation is one revoked certificate, as `ca revoke --json` and
// `ca verify --json` print it, whether the CA directory or meshd revoked it.
type revocation struct {
	Seq         int64  `json:"seq"`
	Serial      string `json:"serial"`
	CommonName  string `json:"common_name"`
	IssuerKeyID string `json:"issuer_key_id"`
	// Reason is the RFC 5280 name; ReasonCode its CRLReason number.
	Reason     string    `json:"reason"`
	ReasonCode int       `json:"reason_code"`
	RevokedAt  time.Time `json:"revoked_at"`
	KeyHash    string    `json:"key_hash,omitempty"`
}

func revocationOf(r store.Revocation) revocation {
	return revocation{
		Seq: r.Seq, Serial: r.Serial, CommonName: r.CommonName, IssuerKeyID: r.IssuerKeyID,
		Reason: ca.Reason(r.Reason).String(), ReasonCode: r.Reason, RevokedAt: r.RevokedAt.UTC(), KeyHash: r.KeyHash,
	}
}

// revocations converts the offline path's revocations.
func revocations(rs []store.Revocation) []revocation {
	out := make([]revocation, 0, len(rs))
	for _, r := range rs {
		out = append(out, revocationOf(r))
	}
	return out
}

// revokedCerts converts meshd's answer. A RevokedCert holds exactly a
// store.Revocation's fields (the conversion stops compiling if either
// changes), so both paths print the same.
func revokedCerts(rs []meshapi.RevokedCert) []revocation {
	out := make([]revocation, 0, len(rs))
	for _, r := range rs {
		out = append(out, revocationOf(store.Revocation(r)))
	}
	return out
}

// verdict is `ca verify --json`: the CA's verdict, its revocation in the
// same form as `ca revoke --json`.
type verdict struct {
	ca.Verdict
	// Revoked shadows the embedded field (encoding/json prefers the
	// shallower one).
	Revoked *revocation `json:"revoked,omitempty"`
}

func verdictOf(v ca.Verdict) verdict {
	out := verdict{Verdict: v}
	if v.Revoked != nil {
		r := revocationOf(*v.Revoked)
		out.Revoked = &r
	}
	return out
}

// auditEntry is one entry of `ca audit --json`.
type auditEntry struct {
	Seq      int64     `json:"seq"`
	Time     time.Time `json:"time"`
	Action   string    `json:"action"`
	Identity string    `json:"identity,omitempty"`
	Outcome  string    `json:"outcome"`
	Detail   string    `json:"detail,omitempty"`
	PrevHash string    `json:"prev_hash"`
	Hash     string    `json:"hash"`
}

func auditEntries(log []store.AuditEntry) []auditEntry {
	out := make([]auditEntry, 0, len(log))
	for _, e := range log {
		out = append(out, auditEntry{e.Seq, e.Time.UTC(), e.Action, e.Identity, e.Outcome, e.Detail, e.PrevHash, e.Hash})
	}
	return out
}

// auditReport is `ca audit --verify --json`: printed when the log is
// intact; a tampered log is an error, as without --json.
type auditReport struct {
	Intact  bool   `json:"intact"`
	Entries int    `json:"entries"`
	Head    string `json:"head"`
	// CheckpointsFile is the file checked; Checkpoints how many of its
	// checkpoints verified (0 when it does not exist yet).
	CheckpointsFile string `json:"checkpoints_file"`
	Checkpoints     int    `json:"checkpoints"`
	// Newest is the checkpoint vouching for the most entries; the entries
	// after its seq are covered by the hash chain alone.
	Newest *checkpoint `json:"newest_checkpoint,omitempty"`
}

type checkpoint struct {
	Seq   int64     `json:"seq"`
	Hash  string    `json:"hash"`
	Time  time.Time `json:"time"`
	KeyID string    `json:"key_id"`
}
