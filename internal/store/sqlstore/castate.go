package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// caStateDoc is store.CAState as ca_state.document holds it. Times are
// Unix nanoseconds, 0 for unset, as in every other table.
type caStateDoc struct {
	TrustDomain   string          `json:"trust_domain"`
	Intermediates []caStateIntDoc `json:"intermediates"`
	// Roots is absent from a document written before the roots were
	// recorded in it (store.CAState.Roots), which reads as none.
	Roots [][]byte `json:"roots,omitempty"`
}

type caStateIntDoc struct {
	KeyID     string `json:"key_id"`
	CertDER   []byte `json:"cert_der"`
	Slot      string `json:"slot"`
	TaintedAt int64  `json:"tainted_at,omitempty"`
	RevokedAt int64  `json:"revoked_at,omitempty"`
	KeyRef    []byte `json:"key_ref,omitempty"`
}

// encodeCAState checks s and returns its document.
func encodeCAState(s store.CAState) (string, error) {
	doc := caStateDoc{TrustDomain: s.TrustDomain, Intermediates: make([]caStateIntDoc, 0, len(s.Intermediates)), Roots: s.Roots}
	if s.TrustDomain == "" {
		return "", errors.New("the trust domain is empty")
	}
	for i, r := range s.Roots {
		if len(r) == 0 {
			return "", fmt.Errorf("root %d has no certificate", i)
		}
		if slices.ContainsFunc(s.Roots[:i], func(o []byte) bool { return bytes.Equal(o, r) }) {
			return "", fmt.Errorf("root %d is listed twice", i)
		}
	}
	seen := make(map[string]bool, len(s.Intermediates))
	slots := map[string]int{}
	for _, in := range s.Intermediates {
		switch {
		case in.KeyID == "":
			return "", errors.New("an intermediate has no key id")
		case seen[in.KeyID]:
			return "", fmt.Errorf("intermediate %s is listed twice", in.KeyID)
		case len(in.CertDER) == 0:
			return "", fmt.Errorf("intermediate %s has no certificate", in.KeyID)
		}
		switch in.Slot {
		case store.SlotActive, store.SlotPrepared:
			if slots[in.Slot]++; slots[in.Slot] > 1 {
				return "", fmt.Errorf("two intermediates in the %s slot", in.Slot)
			}
		case store.SlotRetired:
		default:
			return "", fmt.Errorf("intermediate %s: unknown slot %q", in.KeyID, in.Slot)
		}
		seen[in.KeyID] = true
		d := caStateIntDoc{KeyID: in.KeyID, CertDER: in.CertDER, Slot: in.Slot, KeyRef: in.KeyRef}
		var err error
		if d.TaintedAt, err = optNanos("tainted_at", in.TaintedAt); err != nil {
			return "", err
		}
		if d.RevokedAt, err = optNanos("revoked_at", in.RevokedAt); err != nil {
			return "", err
		}
		doc.Intermediates = append(doc.Intermediates, d)
	}
	b, err := json.Marshal(doc)
	return string(b), err
}

// optNanos is store.Nanos with the zero time as 0.
func optNanos(field string, t time.Time) (int64, error) {
	if t.IsZero() {
		return 0, nil
	}
	return store.Nanos(field, t)
}

func optTime(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return store.FromNanos(n)
}

// CAState returns the CA's state, or an error wrapping store.ErrNotFound
// when none was written.
func (s *Store) CAState(ctx context.Context) (store.CAState, error) {
	type row struct {
		version int64
		doc     string
	}
	rows, err := readRows(s, ctx, `SELECT version, document FROM ca_state WHERE id = 1`, nil,
		func(r *sql.Rows) (row, error) {
			var v row
			return v, r.Scan(&v.version, &v.doc)
		})
	if err != nil {
		return store.CAState{}, s.errorf("read the CA state: %w", err)
	}
	if len(rows) == 0 {
		return store.CAState{}, fmt.Errorf("%w: no CA state in the store", store.ErrNotFound)
	}
	var doc caStateDoc
	if err := json.Unmarshal([]byte(rows[0].doc), &doc); err != nil {
		return store.CAState{}, s.errorf("read the CA state: %w", err)
	}
	out := store.CAState{Version: rows[0].version, TrustDomain: doc.TrustDomain, Roots: doc.Roots}
	for _, d := range doc.Intermediates {
		out.Intermediates = append(out.Intermediates, store.CAIntermediate{KeyID: d.KeyID, CertDER: d.CertDER, Slot: d.Slot,
			TaintedAt: optTime(d.TaintedAt), RevokedAt: optTime(d.RevokedAt), KeyRef: d.KeyRef})
	}
	return out, nil
}

// PutCAState writes st as the CA's state if the stored one is at version
// prev, with e and a, in one transaction; see store.Store.
func (s *Store) PutCAState(ctx context.Context, st store.CAState, prev int64, e store.Event, a store.AuditEntry) (int64, error) {
	doc, err := encodeCAState(st)
	if err != nil {
		return 0, s.errorf("write the CA state: %w", err)
	}
	if a, err = s.prepareAudit(a); err != nil {
		return 0, s.errorf("write the CA state: %w", err)
	}
	at := a.Time.UnixNano()
	var version int64
	err = s.submit(ctx, func(ctx context.Context, tx *writeTx) error {
		var n int64
		var err error
		if prev == 0 {
			n, err = tx.execRows(ctx, tx.st().insertCAState, doc, at)
		} else {
			n, err = tx.execRows(ctx, tx.st().updateCAState, doc, at, prev)
		}
		if err != nil {
			return s.errorf("write the CA state: %w", err)
		}
		if n != 1 {
			return fmt.Errorf("%w: the CA state is no longer at version %d", store.ErrConflict, prev)
		}
		if _, err := tx.insertEvent(ctx, e, at); err != nil {
			return s.errorf("write the CA state: %w", err)
		}
		if err := tx.appendAudit(ctx, a); err != nil {
			return err
		}
		version = prev + 1
		return nil
	})
	if err != nil {
		return 0, err
	}
	return version, nil
}
