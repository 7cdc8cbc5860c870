package store

import (
	"fmt"
	"time"
)

// KeyCert is a certificate a keyCompromise revocation may reach: one of
// the unexpired, unrevoked certificates a store finds under the key's hash
// or under no hash at all (recorded before certificates carried their
// key's hash).
type KeyCert struct {
	Serial  string
	KeyHash string
	PEM     []byte
}

// SameKey returns the serials of cs, in cs's order, whose public key is
// the one keyHash names, other than except (the certificate whose
// revocation blocked the key). The comparison is of KeyHash's canonical
// form, the lowercase hex SHA-256 of the DER SubjectPublicKeyInfo, as
// recorded by the CA that issued the certificate or, for a record without
// it, as read from the certificate's own PEM; a record whose PEM does not
// parse holds no key a verifier could accept, and is left as it is.
func SameKey(keyHash, except string, cs []KeyCert) []string {
	var out []string
	for _, c := range cs {
		if c.Serial == except {
			continue
		}
		h := c.KeyHash
		if h == "" {
			var err error
			if h, err = PEMKeyHash(c.PEM); err != nil {
				continue
			}
		}
		if h == keyHash {
			out = append(out, c.Serial)
		}
	}
	return out
}

// SameKeyEntry is the audit entry of rev, revoked at at because the
// certificate with serial by was revoked for keyCompromise under the same
// key.
func SameKeyEntry(at time.Time, rev Revocation, by string) AuditEntry {
	return AuditEntry{Time: at, Action: "cert.revoke", Identity: rev.CommonName, Outcome: OutcomeOK,
		Detail: fmt.Sprintf("serial %s with the key of serial %s (keyCompromise)", rev.Serial, by)}
}

// RevokeSameKey revokes, with revoke, every certificate of cs whose key
// is keyHash other than except (see SameKey), in cs's order, and returns
// the revocations. revoke records one revocation for keyCompromise and its
// audit entry in the caller's transaction.
func RevokeSameKey(keyHash, except string, cs []KeyCert, revoke func(serial string) (Revocation, error)) ([]Revocation, error) {
	var out []Revocation
	for _, serial := range SameKey(keyHash, except, cs) {
		r, err := revoke(serial)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// RevokeEach revokes each of serials with revoke, which returns what it
// revoked: the serial's revocation, then, when that was for keyCompromise,
// those of the other certificates of its key. A serial revoked that way by
// an earlier call is skipped, so each certificate is revoked once. It
// returns every revocation, in order.
func RevokeEach(serials []string, revoke func(serial string) ([]Revocation, error)) ([]Revocation, error) {
	var out []Revocation
	revoked := map[string]bool{}
	for _, serial := range serials {
		if revoked[serial] {
			continue
		}
		revs, err := revoke(serial)
		if err != nil {
			return nil, err
		}
		for _, r := range revs {
			revoked[r.Serial] = true
		}
		out = append(out, revs...)
	}
	return out, nil
}
