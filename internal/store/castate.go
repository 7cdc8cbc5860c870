package store

import (
	"errors"
	"time"
)

// ErrConflict reports a compare-and-set write (PutCAState) whose record
// changed since the caller read it: nothing was written; read it again
// and decide anew.
var ErrConflict = errors.New("store: the record changed since it was read")

// CAState is the CA's intermediates and which one signs, shared by every
// process that opens the CA (meshd's replicas, meshctl): the one source of
// truth of a rotation, which the CA directory's state.json, int.crt and
// bundle.pem only mirror.
type CAState struct {
	// Version is the store's count of writes of the state, 0 when none
	// was written; PutCAState compares it.
	Version int64
	// TrustDomain is the SPIFFE trust domain of every identity the CA
	// issues, recorded with its first intermediate.
	TrustDomain string
	// Roots are the DER certificates of the roots the CA trusts: its
	// current root first, then the roots a root rollover replaced, whose
	// intermediates may still sign. Every write records them from the
	// writer's CA directory; a replica whose CA directory is empty takes
	// them from here. Empty in a state written before roots were
	// recorded.
	Roots [][]byte
	// Intermediates lists every intermediate the CA ever had, oldest
	// first, revoked ones included.
	Intermediates []CAIntermediate
}

// The slots of an intermediate (CAIntermediate.Slot).
const (
	SlotActive   = "active"
	SlotPrepared = "prepared"
	SlotRetired  = "retired"
)

// CAIntermediate is one intermediate of the CA.
type CAIntermediate struct {
	// KeyID is its subject key id in lowercase hex: the IssuerKeyID of
	// the certificates it signed (Cert).
	KeyID string
	// CertDER is its certificate.
	CertDER []byte
	// Slot is SlotActive, SlotPrepared or SlotRetired.
	Slot string
	// TaintedAt is when an operator marked it tainted (zero: not
	// tainted): every leaf it signed is to be renewed now.
	TaintedAt time.Time
	// RevokedAt is when an operator revoked it (zero: not revoked): no
	// verifier trusts it any more.
	RevokedAt time.Time
	// KeyRef is the content of its key's reference file when the key is
	// on a PKCS#11 token (it names the token and the object, and holds no
	// secret), so that a replica can find the key; nil for a key in a
	// file, which the store never holds.
	KeyRef []byte
}

// Intermediate returns the intermediate with key id id, and whether there
// is one.
func (s CAState) Intermediate(id string) (CAIntermediate, bool) {
	for _, in := range s.Intermediates {
		if in.KeyID == id {
			return in, true
		}
	}
	return CAIntermediate{}, false
}

// InSlot returns the key id of the intermediate in slot (SlotActive or
// SlotPrepared), "" when the slot is empty.
func (s CAState) InSlot(slot string) string {
	for _, in := range s.Intermediates {
		if in.Slot == slot {
			return in.KeyID
		}
	}
	return ""
}
