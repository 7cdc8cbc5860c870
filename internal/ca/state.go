package ca

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"sort"

	"github.com/meshtrust/meshtrust/pemfile"
)

// The slots of an intermediate (IntermediateInfo.State).
const (
	SlotActive   = "active"
	SlotPrepared = "prepared"
	SlotRetired  = "retired"
)

// IntermediateInfo is one of the CA's intermediates and its slot.
type IntermediateInfo struct {
	Cert *x509.Certificate
	// KeyID is its subject key id in lowercase hex: the IssuerKeyID of
	// the certificates it signed (store.Cert).
	KeyID string
	// State is SlotActive, SlotPrepared or SlotRetired.
	State string
}

// Intermediates lists the intermediates the CA directory's state names,
// newest first. A retired one whose certificate file is gone is left out.
func Intermediates(cfg Config) ([]IntermediateInfo, error) {
	cfg = cfg.withDefaults()
	s, err := readState(cfg)
	if err != nil {
		return nil, err
	}
	var out []IntermediateInfo
	for _, id := range liveIDs(s) {
		state := SlotRetired
		switch id {
		case s.Active:
			state = SlotActive
		case s.Prepared:
			state = SlotPrepared
		}
		cert, err := pemfile.ReadCert(filepath.Join(cfg.intKeysDir(), id+".crt"))
		if err != nil {
			if state == SlotRetired && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, err
		}
		out = append(out, IntermediateInfo{Cert: cert, KeyID: id, State: state})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Cert.NotBefore.After(out[j].Cert.NotBefore) })
	return out, nil
}
