package registry

import (
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

// A Binding is the rule by which the certificates one trust source admits
// name the agent ids they may speak for. Each form it enables is one more
// way a certificate may name its agent; a certificate that names none
// speaks for no agent (not_agent_cert), and one that names others than the
// id it asks for is refused (identity_mismatch). The zero value admits no
// agent at all.
type Binding struct {
	// CN admits the certificate's common name as the agent id: for a mesh
	// agent identity <agent>@<node>, the <agent>; otherwise the CN itself,
	// if it is a valid id. Node and external-user certificates speak for
	// no agent.
	CN bool
	// CNReplicas extends CN to MCP Mesh's per-replica ids: a common name
	// <name> that is not a mesh identity also speaks for <name>-<8 hex>,
	// as the agents of MCP Mesh's --tls-auto CA, whose certificates name
	// the agent and whose ids name the replica, register.
	CNReplicas bool
	// TrustDomain, when set, admits MCP Mesh's Vault convention: a common
	// name <name>.<TrustDomain> speaks for the agent id <name> and for MCP
	// Mesh's per-replica ids <name>-<8 hex>.
	TrustDomain string
	// SPIFFE admits certificates by their SPIFFE ID (an X.509-SVID), one
	// template each; see SPIFFETemplate.
	SPIFFE []SPIFFETemplate
}

// A SPIFFETemplate matches the SPIFFE ID of an X.509-SVID (its one
// spiffe:// URI SAN): spiffe://<trust domain>/<segments>, where a segment
// {agent} stands for the agent's name. A certificate whose SPIFFE ID
// matches speaks for <name> and <name>-<8 hex>. A template without
// {agent} is one workload ID for every agent (the seed's
// spiffe://mcp-mesh.local/mesh-agent): it names no agent, so its holder
// may claim any id no one claimed, the first claim binding the id to that
// SPIFFE ID — every workload holding it speaks for every id it claimed.
type SPIFFETemplate struct {
	td       spiffeid.TrustDomain
	segments []string
	raw      string
}

// agentSegment is the placeholder of a SPIFFE ID template.
const agentSegment = "{agent}"

// ParseSPIFFETemplate parses a SPIFFE ID template such as
// spiffe://mcp-mesh.local/agent/{agent} or spiffe://mcp-mesh.local/mesh-agent.
func ParseSPIFFETemplate(s string) (SPIFFETemplate, error) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return SPIFFETemplate{}, fmt.Errorf("SPIFFE ID template %q must start with spiffe://", s)
	}
	tdName, path, _ := strings.Cut(rest, "/")
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return SPIFFETemplate{}, fmt.Errorf("SPIFFE ID template %q: trust domain: %w", s, err)
	}
	if path == "" {
		return SPIFFETemplate{}, fmt.Errorf("SPIFFE ID template %q has no path: a trust domain's own ID names no workload", s)
	}
	segs := strings.Split(path, "/")
	agents := 0
	for _, seg := range segs {
		if seg == agentSegment {
			agents++
			continue
		}
		if strings.ContainsAny(seg, "{}") {
			return SPIFFETemplate{}, fmt.Errorf("SPIFFE ID template %q: segment %q: the only placeholder is a whole segment %s", s, seg, agentSegment)
		}
		if err := spiffeid.ValidatePathSegment(seg); err != nil {
			return SPIFFETemplate{}, fmt.Errorf("SPIFFE ID template %q: segment %q: %w", s, seg, err)
		}
	}
	if agents > 1 {
		return SPIFFETemplate{}, fmt.Errorf("SPIFFE ID template %q names %s %d times; at most once", s, agentSegment, agents)
	}
	return SPIFFETemplate{td: td, segments: segs, raw: s}, nil
}

// String returns the template as it was parsed.
func (t SPIFFETemplate) String() string { return t.raw }

// Match reports whether cert's SPIFFE ID matches t, and returns the agent
// name it holds; any is set for a template without {agent}. A
// certificate with no SPIFFE ID, or more than one, matches nothing.
func (t SPIFFETemplate) Match(cert *x509.Certificate) (name string, any, ok bool) {
	id, err := identity.CertSPIFFEID(cert)
	if err != nil || id.TrustDomain() != t.td {
		return "", false, false
	}
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) != len(t.segments) {
		return "", false, false
	}
	any = true
	for i, seg := range t.segments {
		switch {
		case seg == agentSegment:
			if identity.ValidateID(segs[i]) != nil {
				return "", false, false
			}
			name, any = segs[i], false
		case seg != segs[i]:
			return "", false, false
		}
	}
	return name, any, true
}

// trustDomainName returns <name> of a common name <name>.<td>.
func trustDomainName(cn, td string) (string, bool) {
	name, ok := strings.CutSuffix(cn, "."+td)
	if !ok || identity.ValidateID(name) != nil {
		return "", false
	}
	return name, true
}

// replicaOf reports whether id is name itself or one of MCP Mesh's
// per-replica ids of it, name-<8 lowercase hex>.
func replicaOf(id, name string) bool {
	if id == name {
		return true
	}
	suffix, ok := strings.CutPrefix(id, name+"-")
	if !ok || len(suffix) != 8 {
		return false
	}
	for i := 0; i < len(suffix); i++ {
		if c := suffix[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// allows reports whether peer may speak for agentID under b.
func (b Binding) allows(peer *trust.Peer, agentID string) error {
	cn := peer.Leaf.Subject.CommonName
	var named []string
	var cnErr error
	if b.CN {
		id, err := meshauth.AgentID(peer)
		replicas := b.CNReplicas && peer.Identity.IsZero()
		switch {
		case err != nil:
			cnErr = err
		case id == agentID, replicas && replicaOf(agentID, id):
			return nil
		case replicas:
			named = append(named, fmt.Sprintf("%q or %q", id, id+"-<8 hex>"))
		default:
			named = append(named, fmt.Sprintf("%q", id))
		}
	}
	if b.TrustDomain != "" {
		if name, ok := trustDomainName(cn, b.TrustDomain); ok {
			if replicaOf(agentID, name) {
				return nil
			}
			named = append(named, fmt.Sprintf("%q or %q", name, name+"-<8 hex>"))
		}
	}
	for _, t := range b.SPIFFE {
		name, any, ok := t.Match(peer.Leaf)
		switch {
		case !ok:
		case any || replicaOf(agentID, name):
			return nil
		default:
			named = append(named, fmt.Sprintf("%q or %q", name, name+"-<8 hex>"))
		}
	}
	if len(named) > 0 {
		return refusal(ErrForbidden, "identity_mismatch", "certificate %q may only speak for agent %s, not %q", peer.Name(), strings.Join(named, " or "), agentID)
	}
	if cnErr != nil && (peer.Identity.Kind == identity.KindNode || peer.Identity.Kind == identity.KindExternal || (b.TrustDomain == "" && len(b.SPIFFE) == 0)) {
		return refusal(ErrForbidden, "not_agent_cert", "%v", cnErr)
	}
	return refusal(ErrForbidden, "not_agent_cert", "certificate %q names no agent under the binding of trust source %q (%s)", peer.Name(), peer.Backend, b)
}

// String describes b in ParseBinding's syntax.
func (b Binding) String() string {
	var parts []string
	if b.CN {
		parts = append(parts, "cn")
	}
	if b.CNReplicas {
		parts = append(parts, "cn-replicas")
	}
	if b.TrustDomain != "" {
		parts = append(parts, "trust-domain:"+b.TrustDomain)
	}
	for _, t := range b.SPIFFE {
		parts = append(parts, "spiffe:"+t.String())
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

// ParseBinding parses a binding: a comma list of the forms a certificate
// may name its agent in, "cn", "cn-replicas" (cn and its per-replica
// ids), "trust-domain" (the <name>.<td> form, td being defaultTD),
// "trust-domain:<td>", and "spiffe:<template>"; or "none".
func ParseBinding(s, defaultTD string) (Binding, error) {
	var b Binding
	if strings.TrimSpace(s) == "none" {
		return b, nil
	}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch kind, arg, _ := strings.Cut(f, ":"); {
		case f == "cn":
			b.CN = true
		case f == "cn-replicas":
			b.CN, b.CNReplicas = true, true
		case f == "trust-domain" || kind == "trust-domain":
			td := defaultTD
			if kind == "trust-domain" && f != "trust-domain" {
				td = arg
			}
			if _, err := spiffeid.TrustDomainFromString(td); err != nil || td == "" {
				return Binding{}, fmt.Errorf("binding %q: trust domain %q: want a DNS-like name such as mcp-mesh.local", s, td)
			}
			b.TrustDomain = td
		case kind == "spiffe":
			t, err := ParseSPIFFETemplate(arg)
			if err != nil {
				return Binding{}, fmt.Errorf("binding %q: %w", s, err)
			}
			b.SPIFFE = append(b.SPIFFE, t)
		default:
			return Binding{}, fmt.Errorf("binding %q: unknown form %q (want cn, cn-replicas, trust-domain[:<td>], spiffe:<template> or none)", s, f)
		}
	}
	return b, nil
}

// ParseBindings parses the per-trust-source bindings of meshd's
// --agent-binding: "<source>=<binding>" entries separated by ';' or
// whitespace, each binding as ParseBinding reads it.
func ParseBindings(s, defaultTD string) (map[string]Binding, error) {
	out := map[string]Binding{}
	for _, entry := range strings.FieldsFunc(s, listSeparator) {
		source, rule, ok := strings.Cut(entry, "=")
		if !ok || source == "" {
			return nil, fmt.Errorf("agent binding %q: want <trust source>=<forms>, such as filestore=cn,trust-domain", entry)
		}
		if _, dup := out[source]; dup {
			return nil, fmt.Errorf("agent binding: trust source %q is given twice", source)
		}
		b, err := ParseBinding(rule, defaultTD)
		if err != nil {
			return nil, fmt.Errorf("agent binding of %q: %w", source, err)
		}
		out[source] = b
	}
	return out, nil
}

// NamespaceMode says which agent ids an entity's agents may claim.
type NamespaceMode int

// The namespace modes.
const (
	// NamespacePrefix, the default, admits the ids that start with
	// "<entity>-".
	NamespacePrefix NamespaceMode = iota
	// NamespaceIDs admits the listed ids only.
	NamespaceIDs
	// NamespaceFirstClaim admits any id no one claimed: the first claim
	// binds it to the entity. The entity can then take ids the mesh or
	// another partner would have used, first come; prefer a list.
	NamespaceFirstClaim
)

// A Namespace is the set of agent ids one entity's agents may claim.
type Namespace struct {
	Mode NamespaceMode
	// IDs are the ids of NamespaceIDs, sorted.
	IDs []string
}

// ParseNamespace parses a namespace: "prefix" (or ""), "first-claim", or
// "ids:<id>,<id>,...".
func ParseNamespace(s string) (Namespace, error) {
	switch kind, list, _ := strings.Cut(strings.TrimSpace(s), ":"); kind {
	case "", "prefix":
		if list != "" {
			return Namespace{}, fmt.Errorf("namespace %q: prefix takes no list (the prefix is the entity's name)", s)
		}
		return Namespace{}, nil
	case "first-claim":
		if list != "" {
			return Namespace{}, fmt.Errorf("namespace %q: first-claim takes no list", s)
		}
		return Namespace{Mode: NamespaceFirstClaim}, nil
	case "ids":
		var ids []string
		for _, id := range strings.Split(list, ",") {
			if err := identity.ValidateID(id); err != nil {
				return Namespace{}, fmt.Errorf("namespace %q: agent id: %w", s, err)
			}
			ids = append(ids, id)
		}
		slices.Sort(ids)
		return Namespace{Mode: NamespaceIDs, IDs: slices.Compact(ids)}, nil
	}
	return Namespace{}, fmt.Errorf("namespace %q: want prefix, first-claim or ids:<id>,<id>,…", s)
}

// String returns ns in ParseNamespace's syntax.
func (ns Namespace) String() string {
	switch ns.Mode {
	case NamespaceFirstClaim:
		return "first-claim"
	case NamespaceIDs:
		return "ids:" + strings.Join(ns.IDs, ",")
	}
	return "prefix"
}

// allows reports whether an agent of entity may claim agentID; the
// mesh's own CAs (entity "") have no namespace.
func (ns Namespace) allows(entity, agentID string) error {
	if entity == "" {
		return nil
	}
	switch ns.Mode {
	case NamespaceFirstClaim:
		return nil
	case NamespaceIDs:
		if _, found := slices.BinarySearch(ns.IDs, agentID); found {
			return nil
		}
		return refusal(ErrForbidden, "outside_namespace", "entity %q may only register the agent ids it was registered with (%s); %q is not one of them", entity, strings.Join(ns.IDs, ", "), agentID)
	}
	if strings.HasPrefix(agentID, entity+"-") {
		return nil
	}
	return refusal(ErrForbidden, "outside_namespace", "entity %q may only register agent ids starting with %q; %q is outside its namespace", entity, entity+"-", agentID)
}

// Namespaces holds the namespace of every entity, by the trust source
// that admits it. An entity it does not list has the prefix namespace.
// It is safe for concurrent use; lookups take no lock.
type Namespaces struct {
	mu  sync.Mutex // serialises updates
	set atomic.Pointer[map[nsKey]Namespace]
}

type nsKey struct{ source, entity string }

// NewNamespaces returns an empty set: every entity has the prefix
// namespace.
func NewNamespaces() *Namespaces {
	n := &Namespaces{}
	n.set.Store(&map[nsKey]Namespace{})
	return n
}

// Set sets the namespace of entity as trust source source admits it.
func (n *Namespaces) Set(source, entity string, ns Namespace) {
	n.update(func(m map[nsKey]Namespace) { m[nsKey{source, entity}] = ns })
}

func (n *Namespaces) update(fn func(map[nsKey]Namespace)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	next := make(map[nsKey]Namespace, len(*n.set.Load())+1)
	for k, v := range *n.set.Load() {
		next[k] = v
	}
	fn(next)
	n.set.Store(&next)
}

// Lookup returns entity's namespace under source. A nil set has only
// prefix namespaces.
func (n *Namespaces) Lookup(source, entity string) Namespace {
	if n == nil || entity == "" {
		return Namespace{}
	}
	return (*n.set.Load())[nsKey{source, entity}]
}

// ParseEntityNamespaces parses meshd's --entity-namespace:
// "<entity>=<namespace>" entries separated by ';' or whitespace, each
// namespace as ParseNamespace reads it.
func ParseEntityNamespaces(s string) (map[string]Namespace, error) {
	out := map[string]Namespace{}
	for _, entry := range strings.FieldsFunc(s, listSeparator) {
		entity, rule, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Errorf("entity namespace %q: want <entity>=<namespace>, such as acme=first-claim", entry)
		}
		if err := identity.ValidateID(entity); err != nil {
			return nil, fmt.Errorf("entity namespace %q: entity: %w", entry, err)
		}
		if _, dup := out[entity]; dup {
			return nil, fmt.Errorf("entity namespace: entity %q is given twice", entity)
		}
		ns, err := ParseNamespace(rule)
		if err != nil {
			return nil, fmt.Errorf("entity namespace of %q: %w", entity, err)
		}
		out[entity] = ns
	}
	return out, nil
}

// listSeparator separates the entries of a per-source or per-entity list.
func listSeparator(r rune) bool { return r == ';' || r == ' ' || r == '\t' || r == '\n' }
