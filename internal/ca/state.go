package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
)

// The slots of an intermediate (IntermediateInfo.Slot), and the states
// IntermediateInfo.State adds to them.
const (
	SlotActive   = store.SlotActive
	SlotPrepared = store.SlotPrepared
	SlotRetired  = store.SlotRetired
	// StateTainted: an operator marked it tainted; every leaf it signed
	// is due for renewal now.
	StateTainted = "tainted"
	// StateRevoked: an operator revoked it; nothing trusts it any more.
	StateRevoked = "revoked"
)

// IntermediateInfo is one of the CA's intermediates and its slot.
type IntermediateInfo struct {
	Cert *x509.Certificate
	// KeyID is its subject key id in lowercase hex: the IssuerKeyID of
	// the certificates it signed (store.Cert).
	KeyID string
	// Slot is SlotActive, SlotPrepared or SlotRetired.
	Slot string
	// State is what an operator reads: StateRevoked once revoked,
	// StateTainted once tainted, its Slot otherwise.
	State     string
	TaintedAt time.Time
	RevokedAt time.Time
}

// Intermediates lists the CA's intermediates as the store records them,
// revoked ones included, newest first.
func Intermediates(ctx context.Context, cfg Config, st store.Store) ([]IntermediateInfo, error) {
	cfg = cfg.withDefaults()
	s, err := loadState(ctx, cfg, st)
	if err != nil {
		return nil, err
	}
	out := make([]IntermediateInfo, 0, len(s.Intermediates))
	// Newest first: the state lists them oldest first, and two made in
	// one second keep that order reversed.
	for _, in := range slices.Backward(s.Intermediates) {
		cert, err := x509.ParseCertificate(in.CertDER)
		if err != nil {
			return nil, fmt.Errorf("intermediate %s in the store: %w", in.KeyID, err)
		}
		info := IntermediateInfo{Cert: cert, KeyID: in.KeyID, Slot: in.Slot, State: in.Slot, TaintedAt: in.TaintedAt, RevokedAt: in.RevokedAt}
		switch {
		case !in.RevokedAt.IsZero():
			info.State = StateRevoked
		case !in.TaintedAt.IsZero():
			info.State = StateTainted
		}
		out = append(out, info)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Cert.NotBefore.After(out[j].Cert.NotBefore) })
	return out, nil
}

// The CA's state (store.CAState) lives in the store, shared by every
// process that opens the CA; the CA directory holds only what is derived
// from it (state.json, keys/<id>.crt, int.crt, chain.pem, bundle.pem) and
// the keys, or for a key on a PKCS#11 token its reference file.

// loadState reads the CA's state from st. A CA directory made before the
// state moved into the store has only state.json: its state is imported
// on first open, once, whichever process gets there first.
func loadState(ctx context.Context, cfg Config, st store.Store) (store.CAState, error) {
	if st == nil {
		return store.CAState{}, errors.New("the CA's state is in the store, and no store was given")
	}
	s, err := st.CAState(ctx)
	if !errors.Is(err, store.ErrNotFound) {
		return s, err
	}
	legacy, err := readLegacyState(cfg)
	if err != nil {
		return store.CAState{}, err
	}
	s, err = importState(cfg, legacy)
	if err == nil {
		s, _, err = recordRoots(cfg, s, true)
	}
	if err != nil {
		return store.CAState{}, fmt.Errorf("import %s into the store: %w", cfg.statePath(), err)
	}
	a := store.AuditEntry{Time: cfg.Now(), Action: "ca.state.import", Outcome: store.OutcomeOK,
		Detail: fmt.Sprintf("%d intermediates from %s, active %s", len(s.Intermediates), cfg.statePath(), legacy.Active)}
	s.Version, err = st.PutCAState(ctx, s, 0, store.Event{Kind: store.EventCARotated, IssuerKeyID: legacy.Active}, a)
	if errors.Is(err, store.ErrConflict) {
		return st.CAState(ctx) // another process imported it first
	}
	return s, err
}

// legacyState is state.json: what the CA directory held before the state
// moved into the store, and now the mirror of it that operators read.
type legacyState struct {
	TrustDomain string   `json:"trust_domain"`
	Active      string   `json:"active"`
	Prepared    string   `json:"prepared,omitempty"`
	Retired     []string `json:"retired,omitempty"`
	// Tainted and Revoked are written for operators; they are not
	// imported (no CA directory had them before the store did).
	Tainted map[string]time.Time `json:"tainted,omitempty"`
	Revoked map[string]time.Time `json:"revoked,omitempty"`
	Version int64                `json:"store_version,omitempty"`
}

func readLegacyState(cfg Config) (legacyState, error) {
	var s legacyState
	data, err := os.ReadFile(cfg.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("%w: no intermediate in the store nor in %s (run `meshctl ca issue-intermediate`)", ErrNotInitialized, cfg.Dir)
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("%s: %w", cfg.statePath(), err)
	}
	if s.Active == "" {
		return s, fmt.Errorf("%s names no active intermediate", cfg.statePath())
	}
	return s, nil
}

// importState builds the store's state from state.json and the
// certificates and key references beside it, oldest first.
func importState(cfg Config, l legacyState) (store.CAState, error) {
	s := store.CAState{TrustDomain: l.TrustDomain}
	add := func(id, slot string) error {
		cert, err := pemfile.ReadCert(filepath.Join(cfg.intKeysDir(), id+".crt"))
		if err != nil {
			if slot == SlotRetired && errors.Is(err, os.ErrNotExist) {
				return nil // its certificate is gone: nothing left to trust or list
			}
			return fmt.Errorf("intermediate %s: %w", id, err)
		}
		if keyID(cert) != id {
			return fmt.Errorf("intermediate %s: the certificate's key id is %s", id, keyID(cert))
		}
		ref, err := readKeyRef(cfg, id)
		if err != nil {
			return err
		}
		s.Intermediates = append(s.Intermediates, store.CAIntermediate{KeyID: id, CertDER: cert.Raw, Slot: slot, KeyRef: ref})
		return nil
	}
	for _, id := range l.Retired {
		if err := add(id, SlotRetired); err != nil {
			return s, err
		}
	}
	if err := add(l.Active, SlotActive); err != nil {
		return s, err
	}
	if l.Prepared != "" {
		if err := add(l.Prepared, SlotPrepared); err != nil {
			return s, err
		}
	}
	return s, nil
}

// keyRefPath is the reference file of intermediate id's key when the key
// is on a PKCS#11 token (keys.go's convention: base+".pkcs11").
func (c Config) keyRefPath(id string) string { return filepath.Join(c.intKeysDir(), id+".pkcs11") }

// readKeyRef returns the reference file of intermediate id's key, nil
// when its key is a file.
func readKeyRef(cfg Config, id string) ([]byte, error) {
	ref, err := os.ReadFile(cfg.keyRefPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("intermediate %s: %w", id, err)
	}
	return ref, nil
}

// saveState writes s to the store if it is still at the version s was
// read at, with its ca.rotated event naming cert and an audit entry, then
// rewrites the files derived from it. It returns an error wrapping
// store.ErrConflict when another process changed the state meanwhile.
func saveState(ctx context.Context, cfg Config, st store.Store, s store.CAState, action string, cert *x509.Certificate, detail string) (store.CAState, error) {
	s, _, err := recordRoots(cfg, s, true)
	if err != nil {
		return s, err
	}
	a := store.AuditEntry{Time: cfg.Now(), Action: action, Identity: cert.Subject.CommonName, Outcome: store.OutcomeOK, Detail: detail}
	v, err := st.PutCAState(ctx, s, s.Version, store.Event{Kind: store.EventCARotated, IssuerKeyID: keyID(cert)}, a)
	if errors.Is(err, store.ErrConflict) {
		return s, fmt.Errorf("another process changed the CA's intermediates meanwhile; nothing was changed, run the command again: %w", err)
	}
	if err != nil {
		return s, fmt.Errorf("record the CA's intermediates: %w", err)
	}
	s.Version = v
	return s, publish(cfg, s)
}

// backfillRoots records in st the roots of cfg.Dir that s, the state
// read from st, lacks (a state written before roots were recorded, or by
// a process whose directory lacked one): a replica with an empty CA
// directory finds them there (Materialise). A concurrent write wins; the
// next reload records them then.
func backfillRoots(ctx context.Context, cfg Config, st store.Store, s store.CAState) (store.CAState, error) {
	next, changed, err := recordRoots(cfg, s, false)
	if err != nil || !changed {
		return s, err
	}
	a := store.AuditEntry{Time: cfg.Now(), Action: "ca.state.roots", Outcome: store.OutcomeOK,
		Detail: fmt.Sprintf("recorded %d root(s) of %s", len(next.Roots)-len(s.Roots), cfg.intDir())}
	v, err := st.PutCAState(ctx, next, s.Version, store.Event{Kind: store.EventCARotated, IssuerKeyID: activeID(s)}, a)
	if errors.Is(err, store.ErrConflict) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("record the CA directory's roots in the store: %w", err)
	}
	next.Version = v
	return next, nil
}

// activeID is the key id of the active intermediate, "" for none.
func activeID(s store.CAState) string { return s.InSlot(SlotActive) }

// liveIDs lists the intermediates that may still have valid leaves and
// are trusted: the active, the prepared and the retired ones that are
// not revoked, active first, then newest first.
func liveIDs(s store.CAState) []string {
	var ids []string
	if id := s.InSlot(SlotActive); id != "" {
		ids = append(ids, id)
	}
	if id := s.InSlot(SlotPrepared); id != "" {
		ids = append(ids, id)
	}
	for _, in := range slices.Backward(s.Intermediates) {
		if in.Slot == SlotRetired && in.RevokedAt.IsZero() {
			ids = append(ids, in.KeyID)
		}
	}
	return ids
}

// writeDerivedState rewrites state.json, the mirror of s for operators,
// and keys/<id>.crt of every intermediate whose file is missing or
// differs. It never writes a key, only a PKCS#11 reference file the
// state holds and the directory lacks, and nothing of an intermediate
// that none of roots (localRoots) signed: the store alone vouches for no file here.
func writeDerivedState(cfg Config, s store.CAState, roots []*x509.Certificate) error {
	l := legacyState{TrustDomain: s.TrustDomain, Version: s.Version}
	for _, in := range s.Intermediates {
		switch in.Slot {
		case SlotActive:
			l.Active = in.KeyID
		case SlotPrepared:
			l.Prepared = in.KeyID
		default:
			l.Retired = append(l.Retired, in.KeyID)
		}
		if !in.TaintedAt.IsZero() {
			if l.Tainted == nil {
				l.Tainted = map[string]time.Time{}
			}
			l.Tainted[in.KeyID] = in.TaintedAt.UTC()
		}
		if !in.RevokedAt.IsZero() {
			if l.Revoked == nil {
				l.Revoked = map[string]time.Time{}
			}
			l.Revoked[in.KeyID] = in.RevokedAt.UTC()
		}
		if cert, err := x509.ParseCertificate(in.CertDER); err != nil || signedByLocalRoot(cert, roots) != nil {
			continue
		}
		if err := materialise(cfg, in); err != nil {
			return err
		}
	}
	data, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	return writeIfChanged(cfg.statePath(), append(data, '\n'), 0o600)
}

// materialise writes intermediate in's certificate, and its key's
// reference file when the key is on a token, into the keys directory
// where they are missing or differ: a replica whose CA directory did not
// see the rotation finds them there.
func materialise(cfg Config, in store.CAIntermediate) error {
	if err := pemfile.MkdirPrivate(cfg.intKeysDir()); err != nil {
		return err
	}
	crt := filepath.Join(cfg.intKeysDir(), in.KeyID+".crt")
	if cur, err := pemfile.ReadCert(crt); err != nil || !bytes.Equal(cur.Raw, in.CertDER) {
		cert, err := x509.ParseCertificate(in.CertDER)
		if err != nil {
			return fmt.Errorf("intermediate %s in the store: %w", in.KeyID, err)
		}
		if err := pemfile.WriteAtomic(crt, pemfile.EncodeCerts(cert), 0o644); err != nil {
			return err
		}
	}
	if len(in.KeyRef) == 0 {
		return nil
	}
	if cur, err := os.ReadFile(cfg.keyRefPath(in.KeyID)); err == nil && bytes.Equal(cur, in.KeyRef) {
		return nil
	}
	return pemfile.WriteAtomic(cfg.keyRefPath(in.KeyID), in.KeyRef, 0o600)
}
