package meshd

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/trust"
)

// entityNames keeps each partner entity name to one trust source, so
// that an entity is one (source, name), never the CAs of two sources
// under one name: the name is what the registry's provider boundary,
// `entity:` grants and entity revocations compare. The holder of a name
// is the source that held it first since meshd started (at start, the
// first in the chain's order); it keeps the name while it holds it, and
// meanwhile another source's certificates under that name are refused
// (entity_name_taken) and a registration of it is refused (409). Its
// mutex is a leaf: sources call refresh after publishing a change, with
// none of their locks held that Entities or Certificates take.
type entityNames struct {
	log *slog.Logger
	// sources in the chain's order.
	sources []entityHolder

	mu     sync.Mutex
	holder map[string]string // entity name -> the source holding it
	warned map[string]bool   // "source entity" conflicts already logged
}

// entityHolder is one source of entity names: its backend name, the names
// it holds now, and whether it holds one.
type entityHolder struct {
	name     string
	entities func() []string
	holds    func(entity string) bool
}

// namedSource is a backend that holds partner CAs by entity name: the
// registered entities, filestore's entities/, k8s-secrets, spire.
type namedSource interface {
	trust.Backend
	Entities() []string
	Certificates(entity string) []*x509.Certificate
}

// newEntityNames follows the entity names of backends, in the chain's
// order. revoked, the revoked entities' CAs, holds no name.
func newEntityNames(log *slog.Logger, backends []trust.Backend, revoked trust.Backend) *entityNames {
	n := &entityNames{log: log, holder: map[string]string{}, warned: map[string]bool{}}
	for _, b := range backends {
		c, ok := b.(namedSource)
		if !ok || b == revoked {
			continue
		}
		n.sources = append(n.sources, entityHolder{name: b.Name(), entities: c.Entities,
			holds: func(e string) bool { return len(c.Certificates(e)) > 0 }})
		if nt, ok := b.(trust.Notifier); ok {
			nt.OnChange(n.refresh)
		}
	}
	n.refresh()
	return n
}

// refresh drops the holders that no longer hold their names, gives each
// name no one holds to the first source (in chain order) that has it, and
// logs each conflict once.
func (n *entityNames) refresh() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for e, h := range n.holder {
		if !n.holdsLocked(h, e) {
			delete(n.holder, e)
		}
	}
	for _, s := range n.sources {
		for _, e := range s.entities() {
			h, ok := n.holder[e]
			if !ok {
				n.holder[e] = s.name
				continue
			}
			if key := s.name + " " + e; h != s.name && !n.warned[key] {
				n.warned[key] = true
				n.log.Warn("two trust sources hold an entity of the same name; the certificates of the later one are refused until one of them is renamed or removed",
					"entity", e, "holder", h, "refused_source", s.name)
			}
		}
	}
}

func (n *entityNames) holdsLocked(source, entity string) bool {
	for _, s := range n.sources {
		if s.name == source {
			return s.holds(entity)
		}
	}
	return false
}

// check refuses peer when its entity's name is held by another source
// than the one that admitted it. The mesh's own CAs (entity "") are no
// name any source holds.
func (n *entityNames) check(peer *trust.Peer) error {
	if peer == nil || peer.Entity == "" {
		return nil
	}
	// Compared: the entity name the admitting source gave the CA (file
	// name, Secret name or annotation, registered name, trust domain's
	// entity) and that source's backend name, against the name's holder.
	n.mu.Lock()
	h, ok := n.holder[peer.Entity]
	n.mu.Unlock()
	if ok && h != peer.Backend {
		return fmt.Errorf("%w: entity %q is held by trust source %q; trust source %q has a CA under the same name, and meshd refuses it (rename one of them, or remove it from one source)",
			server.ErrEntityNameTaken, peer.Entity, h, peer.Backend)
	}
	return nil
}

// otherHolder returns a source other than except that holds entity now,
// "" when none does: a registration of a name another source holds is
// refused.
func (n *entityNames) otherHolder(entity, except string) string {
	for _, s := range n.sources {
		if s.name != except && s.holds(entity) {
			return s.name
		}
	}
	return ""
}

// sources is the trust sources as the routes see them
// (server.TrustSources).
type sources struct{ m *Meshd }

func (s sources) Check(peer *trust.Peer) error { return s.m.names.check(peer) }

// OtherHolder compares entity, the name a registration asks for, with the
// names the other sources gave their CAs (file name, Secret, trust
// domain's entity).
func (s sources) OtherHolder(entity string) string {
	return s.m.names.otherHolder(entity, BackendEntities)
}

func (s sources) Dynamic() []server.EntitySource {
	out := make([]server.EntitySource, len(s.m.dynamic))
	for i, b := range s.m.dynamic {
		out[i] = b
	}
	return out
}

func (s sources) TrustDir() server.EntitySource {
	if s.m.files == nil {
		return nil // not a typed nil: the routes compare with nil
	}
	return s.m.files
}

func (s sources) Namespace(source, entity string) registry.Namespace {
	return s.m.namespaces.Lookup(source, entity)
}

func (s sources) Admitted(fingerprint string, chain []*x509.Certificate, now time.Time) {
	s.m.admitted.add(fingerprint, chain, now)
}
