package trust

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"sync"
	"time"

	"github.com/meshtrust/meshtrust/identity"
)

// Revoked describes one revocation: of a certificate (Serial, with the
// IssuerKeyID of the CA that issued it), of an identity (Identity), of a
// public key (KeyHash) or of an entity (Entity).
type Revoked struct {
	Serial      string `json:"serial,omitempty"`
	IssuerKeyID string `json:"issuer_key_id,omitempty"`
	// Identity is a revoked identity's common name ("opus@ct111",
	// "ct200.mesh"): every certificate of it is refused, and a revoked
	// node's agents' too.
	Identity string `json:"identity,omitempty"`
	// KeyHash is the lowercase hex SHA-256 of a revoked public key's
	// SubjectPublicKeyInfo (see KeyHash): every certificate of the key is
	// refused.
	KeyHash string    `json:"key_hash,omitempty"`
	Entity  string    `json:"entity,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	At      time.Time `json:"time"`
}

// RevocationSet is the in-memory set of revoked certificates, identities,
// keys and entities. Lookups are O(1) and take a read lock; every change
// bumps a generation that caches compare against. The zero value is empty
// and ready to use.
type RevocationSet struct {
	mu sync.RWMutex
	// serials holds, per serial, the revocations of it: serials are
	// unique only per issuer, so one CA's revocation never refuses another
	// CA's certificate of the same serial.
	serials    map[string][]Revoked
	identities map[string]Revoked // by common name
	keys       map[string]Revoked // by key hash
	entities   map[string]Revoked // by entity name
	onChange   []func()
}

// KeyHash returns the lowercase hex SHA-256 of a DER SubjectPublicKeyInfo,
// the form Revoked.KeyHash takes, and the store's record of an issued
// certificate's key and of a blocked key.
func KeyHash(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

// OnChange registers fn to run after every change to the set.
func (s *RevocationSet) OnChange(fn func()) {
	s.mu.Lock()
	s.onChange = append(s.onChange, fn)
	s.mu.Unlock()
}

// AddSerial records a revoked certificate: r.Serial (lowercase hex) of
// the issuer whose subject key id is r.IssuerKeyID. It reports whether the
// revocation was new.
func (s *RevocationSet) AddSerial(r Revoked) bool {
	return s.add(func() bool {
		if s.serials == nil {
			s.serials = make(map[string][]Revoked)
		}
		for _, have := range s.serials[r.Serial] {
			if have.IssuerKeyID == r.IssuerKeyID {
				return false
			}
		}
		s.serials[r.Serial] = append(s.serials[r.Serial], r)
		return true
	})
}

// AddIdentity records a revoked identity (r.Identity). It reports whether
// it was new.
func (s *RevocationSet) AddIdentity(r Revoked) bool {
	return s.add(func() bool { return put(&s.identities, r.Identity, r) })
}

// RemoveIdentity forgets an identity's revocation, when an operator
// reinstates it. Its certificates revoked by serial stay revoked.
func (s *RevocationSet) RemoveIdentity(name string) bool {
	return s.add(func() bool { return remove(s.identities, name) })
}

// AddKey records a revoked public key (r.KeyHash). It reports whether it
// was new.
func (s *RevocationSet) AddKey(r Revoked) bool {
	return s.add(func() bool { return put(&s.keys, r.KeyHash, r) })
}

// AddEntity records a revoked entity. It reports whether it was new.
func (s *RevocationSet) AddEntity(r Revoked) bool {
	return s.add(func() bool { return put(&s.entities, r.Entity, r) })
}

// RemoveEntity forgets an entity's revocation, when the entity is
// registered again.
func (s *RevocationSet) RemoveEntity(name string) bool {
	return s.add(func() bool { return remove(s.entities, name) })
}

func put[K comparable](m *map[K]Revoked, k K, r Revoked) bool {
	if *m == nil {
		*m = make(map[K]Revoked)
	}
	if _, ok := (*m)[k]; ok {
		return false
	}
	(*m)[k] = r
	return true
}

func remove[K comparable](m map[K]Revoked, k K) bool {
	if _, ok := m[k]; !ok {
		return false
	}
	delete(m, k)
	return true
}

func (s *RevocationSet) add(change func() bool) bool {
	s.mu.Lock()
	changed := change()
	var fns []func()
	if changed {
		fns = s.onChange
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
	return changed
}

// Serial returns the revocation of the certificate serial issued by the
// CA whose subject key id is issuerKeyID, if it is revoked. An empty
// issuer on either side (a certificate without an authority key id, a
// revocation whose source did not name the issuer) matches every issuer:
// when in doubt, refuse.
func (s *RevocationSet) Serial(issuerKeyID, serial string) (Revoked, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, r := range s.serials[serial] {
		if issuerKeyID == "" || r.IssuerKeyID == "" || r.IssuerKeyID == issuerKeyID {
			return r, true
		}
	}
	return Revoked{}, false
}

// Identity returns the revocation of the identity name, if it is revoked.
func (s *RevocationSet) Identity(name string) (Revoked, bool) {
	s.mu.RLock()
	r, ok := s.identities[name]
	s.mu.RUnlock()
	return r, ok
}

// Entity returns the revocation of entity, if it is revoked.
func (s *RevocationSet) Entity(name string) (Revoked, bool) {
	s.mu.RLock()
	r, ok := s.entities[name]
	s.mu.RUnlock()
	return r, ok
}

// check refuses a peer whose certificate, identity (or its node), key or
// entity is revoked.
func (s *RevocationSet) check(p *Peer) error {
	if s == nil {
		return nil
	}
	if err := s.checkLeaf(p.Leaf, p.IssuerKeyID, p.Serial, p.Identity); err != nil {
		return err
	}
	if p.Entity != "" {
		if r, ok := s.Entity(p.Entity); ok {
			return refuse(ErrRevoked, ReasonEntityRevoked, "entity %q was revoked at %s", p.Entity, r.At.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// CheckLeaf refuses leaf when it is revoked by issuer and serial, when the
// mesh identity its common name names (or that identity's node) is
// revoked, or when its key is. An entity's revocation needs the verified
// chain to name the entity; a Chain checks that too.
func (s *RevocationSet) CheckLeaf(leaf *x509.Certificate) error {
	if s == nil {
		return nil
	}
	id, _ := identity.Parse(leaf.Subject.CommonName)
	return s.checkLeaf(leaf, hex.EncodeToString(leaf.AuthorityKeyId), leaf.SerialNumber.Text(16), id)
}

func (s *RevocationSet) checkLeaf(leaf *x509.Certificate, issuer, serial string, id identity.Identity) error {
	if r, ok := s.Serial(issuer, serial); ok {
		return refuse(ErrRevoked, ReasonRevoked, "certificate %q (serial %s) was revoked at %s", DisplayName(leaf), serial, r.At.UTC().Format(time.RFC3339))
	}
	if name, r, ok := s.revokedIdentity(id); ok {
		return refuse(ErrRevoked, ReasonRevoked, "identity %q was revoked at %s; every certificate of it is refused until an operator reinstates it", name, r.At.UTC().Format(time.RFC3339))
	}
	if r, ok := s.key(leaf); ok {
		return refuse(ErrRevoked, ReasonRevoked, "the key of certificate %q was revoked for key compromise at %s", DisplayName(leaf), r.At.UTC().Format(time.RFC3339))
	}
	return nil
}

// key returns the revocation of leaf's key, if it is revoked. Without any
// revoked key it costs no hash.
func (s *RevocationSet) key(leaf *x509.Certificate) (Revoked, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.keys) == 0 {
		return Revoked{}, false
	}
	r, ok := s.keys[KeyHash(leaf.RawSubjectPublicKeyInfo)]
	return r, ok
}

// revokedIdentity returns the revoked name that refuses id: id itself or,
// for an agent, its node.
func (s *RevocationSet) revokedIdentity(id identity.Identity) (string, Revoked, bool) {
	if id.IsZero() {
		return "", Revoked{}, false
	}
	s.mu.RLock()
	n := len(s.identities)
	s.mu.RUnlock()
	if n == 0 {
		return "", Revoked{}, false
	}
	name := id.CommonName()
	if r, ok := s.Identity(name); ok {
		return name, r, true
	}
	if id.Kind == identity.KindAgent {
		if node, err := identity.NewNode(id.Node); err == nil {
			name = node.CommonName()
			if r, ok := s.Identity(name); ok {
				return name, r, true
			}
		}
	}
	return "", Revoked{}, false
}
