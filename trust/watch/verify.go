package watch

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/meshtrust/meshtrust/trust"
)

// EntityFunc names the partner entity whose CA issued a verified chain
// (leaf first, anchor last), or "" for the mesh's own CA.
type EntityFunc func(chain []*x509.Certificate) string

// AnchorEntity returns an EntityFunc that names the entity a set of
// trust.Anchors registered the chain's anchor under, the same attribution
// trust.Anchors.Verify makes. A process that trusts partner CAs through
// a trust.Anchors sets it as Config.Entity so that revoking an entity
// refuses every certificate its CA issued.
func AnchorEntity(a *trust.Anchors) EntityFunc {
	return func(chain []*x509.Certificate) string {
		if len(chain) == 0 {
			return ""
		}
		anchor := chain[len(chain)-1]
		for _, c := range a.Certificates("") { // the mesh's own come first
			if bytes.Equal(c.Raw, anchor.Raw) {
				return ""
			}
		}
		for _, name := range a.Entities() { // sorted: the first match is stable
			for _, c := range a.Certificates(name) {
				if bytes.Equal(c.Raw, anchor.Raw) {
					return name
				}
			}
		}
		return ""
	}
}

// check refuses leaf when it (by issuer and serial), its identity, its key
// or the entity of chain is revoked.
func check(set *trust.RevocationSet, entity EntityFunc, leaf *x509.Certificate, chains [][]*x509.Certificate) error {
	if err := set.CheckLeaf(leaf); err != nil {
		return err
	}
	if entity == nil {
		return nil
	}
	for _, chain := range chains {
		if name := entity(chain); name != "" {
			if r, ok := set.Entity(name); ok {
				return fmt.Errorf("%w: entity %q of certificate %q was revoked at %s", trust.ErrRevoked, name, trust.DisplayName(leaf), r.At.UTC().Format(time.RFC3339))
			}
		}
	}
	return nil
}

// VerifyConnection returns a tls.Config.VerifyConnection that refuses a
// peer whose leaf serial is in set, or whose verified chain's entity (as
// entity names it; nil skips the check) is. It runs after the standard
// chain verification, and on resumed sessions too, which
// VerifyPeerCertificate does not: prefer it. A connection without a peer
// certificate is let through; requiring one is ClientAuth's job.
func VerifyConnection(set *trust.RevocationSet, entity EntityFunc) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		return check(set, entity, cs.PeerCertificates[0], cs.VerifiedChains)
	}
}

// VerifyPeerCertificate returns a tls.Config.VerifyPeerCertificate that
// refuses what VerifyConnection refuses. It is not called on resumed
// sessions; use it where a VerifyConnection is taken already.
func VerifyPeerCertificate(set *trust.RevocationSet, entity EntityFunc) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, chains [][]*x509.Certificate) error {
		var leaf *x509.Certificate
		if len(chains) > 0 && len(chains[0]) > 0 {
			leaf = chains[0][0]
		} else if len(raw) > 0 {
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return errors.Join(trust.ErrUntrusted, err)
			}
			leaf = c
		} else {
			return nil
		}
		return check(set, entity, leaf, chains)
	}
}

// VerifyConnection refuses a peer the Watcher's set holds revoked; see
// the package function. A server or client on a plain tls.Config sets it
// as the config's VerifyConnection (package agent's configs use
// VerifyPeerCertificate through an Authorizer instead).
func (w *Watcher) VerifyConnection(cs tls.ConnectionState) error {
	return VerifyConnection(w.set, w.cfg.Entity)(cs)
}

// VerifyPeerCertificate refuses a peer the Watcher's set holds revoked;
// see the package function.
func (w *Watcher) VerifyPeerCertificate(raw [][]byte, chains [][]*x509.Certificate) error {
	return VerifyPeerCertificate(w.set, w.cfg.Entity)(raw, chains)
}
