package trust

import (
	"sync"
	"sync/atomic"
	"time"
)

// Revoked describes one revocation.
type Revoked struct {
	Serial      string    `json:"serial,omitempty"`
	IssuerKeyID string    `json:"issuer_key_id,omitempty"`
	Entity      string    `json:"entity,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	At          time.Time `json:"time"`
}

// RevocationSet is the in-memory set of revoked certificate serials and
// entities. Lookups are O(1) and take a read lock; every change bumps a
// generation that caches compare against. The zero value is empty and
// ready to use.
type RevocationSet struct {
	mu       sync.RWMutex
	serials  map[string]Revoked // by serial
	entities map[string]Revoked // by entity name
	gen      atomic.Uint64
	onChange []func()
}

// OnChange registers fn to run after every change to the set.
func (s *RevocationSet) OnChange(fn func()) {
	s.mu.Lock()
	s.onChange = append(s.onChange, fn)
	s.mu.Unlock()
}

// AddSerial records a revoked certificate serial (lowercase hex). It
// reports whether the serial was new.
func (s *RevocationSet) AddSerial(r Revoked) bool {
	return s.add(func() bool {
		if s.serials == nil {
			s.serials = make(map[string]Revoked)
		}
		if _, ok := s.serials[r.Serial]; ok {
			return false
		}
		s.serials[r.Serial] = r
		return true
	})
}

// AddEntity records a revoked entity. It reports whether it was new.
func (s *RevocationSet) AddEntity(r Revoked) bool {
	return s.add(func() bool {
		if s.entities == nil {
			s.entities = make(map[string]Revoked)
		}
		if _, ok := s.entities[r.Entity]; ok {
			return false
		}
		s.entities[r.Entity] = r
		return true
	})
}

// RemoveEntity forgets an entity's revocation, when the entity is
// registered again.
func (s *RevocationSet) RemoveEntity(name string) bool {
	return s.add(func() bool {
		if _, ok := s.entities[name]; !ok {
			return false
		}
		delete(s.entities, name)
		return true
	})
}

func (s *RevocationSet) add(change func() bool) bool {
	s.mu.Lock()
	changed := change()
	var fns []func()
	if changed {
		s.gen.Add(1)
		fns = s.onChange
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
	return changed
}

// Serial returns the revocation of serial, if it is revoked.
func (s *RevocationSet) Serial(serial string) (Revoked, bool) {
	s.mu.RLock()
	r, ok := s.serials[serial]
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

// Generation increases with every change.
func (s *RevocationSet) Generation() uint64 { return s.gen.Load() }

// Len returns the number of revoked serials and entities.
func (s *RevocationSet) Len() (serials, entities int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.serials), len(s.entities)
}

// check refuses a peer whose serial or entity is revoked.
func (s *RevocationSet) check(p *Peer) error {
	if s == nil {
		return nil
	}
	if r, ok := s.Serial(p.Serial); ok {
		return refuse(ErrRevoked, ReasonRevoked, "certificate %q (serial %s) was revoked at %s", p.Name(), p.Serial, r.At.UTC().Format(time.RFC3339))
	}
	if p.Entity != "" {
		if r, ok := s.Entity(p.Entity); ok {
			return refuse(ErrRevoked, ReasonEntityRevoked, "entity %q was revoked at %s", p.Entity, r.At.UTC().Format(time.RFC3339))
		}
	}
	return nil
}
