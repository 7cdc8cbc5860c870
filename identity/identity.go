// Package identity says what a mesh peer is: a node, an agent running on a
// node, or an external user. It parses, validates and formats the names the
// mesh CA writes into certificates, and derives an Identity from a verified
// certificate.
//
// The naming scheme:
//
//	node           CN "ct111.mesh"      spiffe://<td>/node/ct111
//	agent          CN "opus@ct111"      spiffe://<td>/agent/ct111/opus
//	external user  CN "alice@external"  spiffe://<td>/external/alice
//
// Every id (node, agent, user) is a DNS label: 1–63 lowercase letters, digits
// and '-', neither starting nor ending with '-'. The node id "external" is
// reserved so that an agent name can never be mistaken for an external user.
package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the SPIFFE trust domain used when none is configured.
const DefaultTrustDomain = "mesh.local"

// NodeSuffix is appended to a node id to form the node's common name.
const NodeSuffix = ".mesh"

// ExternalNode is the reserved node part of an external user's name.
const ExternalNode = "external"

// Kind is the kind of peer an Identity names.
type Kind int

// The kinds of identity the mesh CA issues.
const (
	KindNode Kind = iota + 1
	KindAgent
	KindExternal
)

// String returns the lowercase name of the kind ("node", "agent", "external").
func (k Kind) String() string {
	switch k {
	case KindNode:
		return "node"
	case KindAgent:
		return "agent"
	case KindExternal:
		return "external"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Errors callers branch on.
var (
	// ErrInvalidID reports an id that is not a DNS label.
	ErrInvalidID = errors.New("identity: invalid id")
	// ErrInvalidName reports a common name that is not a mesh identity.
	ErrInvalidName = errors.New("identity: invalid name")
	// ErrMismatch reports a certificate whose CN and SANs disagree.
	ErrMismatch = errors.New("identity: certificate names disagree")
)

// Identity is a mesh peer's name. The zero value is not a valid identity;
// build one with Node, Agent, External or Parse.
type Identity struct {
	Kind Kind
	// Node is the node id for KindNode and KindAgent; empty for KindExternal.
	Node string
	// Name is the agent id for KindAgent or the user for KindExternal; empty
	// for KindNode.
	Name string
}

// ValidateID reports whether s is a valid node, agent or user id.
func ValidateID(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty (use 1-63 lowercase letters, digits and '-')", ErrInvalidID)
	}
	if len(s) > 63 {
		return fmt.Errorf("%w: %q is %d characters long (at most 63)", ErrInvalidID, truncate(s), len(s))
	}
	if s[0] == '-' || s[len(s)-1] == '-' {
		return fmt.Errorf("%w: %q starts or ends with '-'", ErrInvalidID, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' {
			continue
		}
		// Decode the rune so the message names the character the user typed
		// ('é', not the lone byte 'Ã'); invalid UTF-8 shows as U+FFFD.
		r, _ := utf8.DecodeRuneInString(s[i:])
		return fmt.Errorf("%w: %q contains %q (use lowercase letters, digits and '-')", ErrInvalidID, s, r)
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 20 {
		return s[:20] + "…"
	}
	return s
}

// NewNode returns the identity of node id.
func NewNode(id string) (Identity, error) {
	if err := ValidateID(id); err != nil {
		return Identity{}, fmt.Errorf("node id: %w", err)
	}
	if id == ExternalNode {
		return Identity{}, fmt.Errorf("node id: %w: %q is reserved for external users", ErrInvalidID, id)
	}
	return Identity{Kind: KindNode, Node: id}, nil
}

// NewAgent returns the identity of agent id running on node.
func NewAgent(agent, node string) (Identity, error) {
	if err := ValidateID(agent); err != nil {
		return Identity{}, fmt.Errorf("agent id: %w", err)
	}
	n, err := NewNode(node)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Kind: KindAgent, Node: n.Node, Name: agent}, nil
}

// NewExternal returns the identity of external user.
func NewExternal(user string) (Identity, error) {
	if err := ValidateID(user); err != nil {
		return Identity{}, fmt.Errorf("user: %w", err)
	}
	return Identity{Kind: KindExternal, Name: user}, nil
}

// Parse parses a common name: "ct111.mesh", "opus@ct111" or "alice@external".
func Parse(cn string) (Identity, error) {
	if node, ok := strings.CutSuffix(cn, NodeSuffix); ok && !strings.Contains(node, "@") {
		id, err := NewNode(node)
		if err != nil {
			return Identity{}, fmt.Errorf("%w %q: %w", ErrInvalidName, cn, err)
		}
		return id, nil
	}
	name, node, ok := strings.Cut(cn, "@")
	if !ok {
		return Identity{}, fmt.Errorf("%w %q: want <node>.mesh, <agent>@<node> or <user>@external", ErrInvalidName, cn)
	}
	var (
		id  Identity
		err error
	)
	if node == ExternalNode {
		id, err = NewExternal(name)
	} else {
		id, err = NewAgent(name, node)
	}
	if err != nil {
		return Identity{}, fmt.Errorf("%w %q: %w", ErrInvalidName, cn, err)
	}
	return id, nil
}

// IsZero reports whether id is the zero Identity.
func (id Identity) IsZero() bool { return id.Kind == 0 }

// CommonName returns the certificate common name of id.
func (id Identity) CommonName() string {
	switch id.Kind {
	case KindNode:
		return id.Node + NodeSuffix
	case KindAgent:
		return id.Name + "@" + id.Node
	case KindExternal:
		return id.Name + "@" + ExternalNode
	}
	return ""
}

// String returns the common name of id.
func (id Identity) String() string { return id.CommonName() }

// SPIFFEID returns the SPIFFE ID of id in trust domain td.
func (id Identity) SPIFFEID(td spiffeid.TrustDomain) (spiffeid.ID, error) {
	switch id.Kind {
	case KindNode:
		return spiffeid.FromSegments(td, "node", id.Node)
	case KindAgent:
		return spiffeid.FromSegments(td, "agent", id.Node, id.Name)
	case KindExternal:
		return spiffeid.FromSegments(td, "external", id.Name)
	}
	return spiffeid.ID{}, fmt.Errorf("%w: zero identity has no SPIFFE ID", ErrInvalidName)
}

// NodeDNSNames returns the DNS names every node certificate carries: the
// node's own name and one per listener it exposes.
func NodeDNSNames(node string) []string {
	return []string{
		node + NodeSuffix,
		node + "-mcp" + NodeSuffix,
		node + "-runtime-rpc" + NodeSuffix,
	}
}

// FromSPIFFEID returns the identity a mesh SPIFFE ID names.
func FromSPIFFEID(sid spiffeid.ID) (Identity, error) {
	segs := strings.Split(strings.TrimPrefix(sid.Path(), "/"), "/")
	var (
		id  Identity
		err error
	)
	switch {
	case len(segs) == 2 && segs[0] == "node":
		id, err = NewNode(segs[1])
	case len(segs) == 3 && segs[0] == "agent":
		id, err = NewAgent(segs[2], segs[1])
	case len(segs) == 2 && segs[0] == "external":
		id, err = NewExternal(segs[1])
	default:
		return Identity{}, fmt.Errorf("%w: SPIFFE ID %q is not a mesh identity (want /node/<n>, /agent/<n>/<a> or /external/<u>)", ErrInvalidName, sid)
	}
	if err != nil {
		return Identity{}, fmt.Errorf("%w: SPIFFE ID %q: %w", ErrInvalidName, sid, err)
	}
	return id, nil
}

// FromCertificate derives the identity of a certificate the mesh CA issued
// in trust domain td. The subject CN must parse as an identity, the
// certificate must carry exactly one SPIFFE URI SAN and it must name the
// same identity in td, and a node certificate must list the node's DNS
// name. It does not verify the chain: call it on a verified certificate.
func FromCertificate(cert *x509.Certificate, td spiffeid.TrustDomain) (Identity, error) {
	if cert == nil {
		return Identity{}, fmt.Errorf("%w: no certificate", ErrInvalidName)
	}
	id, err := Parse(cert.Subject.CommonName)
	if err != nil {
		return Identity{}, err
	}
	sid, err := CertSPIFFEID(cert)
	if err != nil {
		return Identity{}, err
	}
	want, err := id.SPIFFEID(td)
	if err != nil {
		return Identity{}, err
	}
	if sid != want {
		return Identity{}, fmt.Errorf("%w: CN %q wants SPIFFE ID %q, certificate has %q", ErrMismatch, cert.Subject.CommonName, want, sid)
	}
	if id.Kind == KindNode && !contains(cert.DNSNames, id.CommonName()) {
		return Identity{}, fmt.Errorf("%w: node certificate %q lacks DNS SAN %q", ErrMismatch, id.CommonName(), id.CommonName())
	}
	return id, nil
}

// CertSPIFFEID returns the SPIFFE ID of cert as an X.509-SVID carries
// it: exactly one spiffe:// URI SAN. It does not verify the chain.
func CertSPIFFEID(cert *x509.Certificate) (spiffeid.ID, error) {
	var sid spiffeid.ID
	n := 0
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		n++
		var err error
		if sid, err = spiffeid.FromURI(u); err != nil {
			return spiffeid.ID{}, fmt.Errorf("%w: URI SAN %q: %w", ErrMismatch, u, err)
		}
	}
	if n != 1 {
		return spiffeid.ID{}, fmt.Errorf("%w: %q has %d SPIFFE URI SANs, want exactly 1", ErrMismatch, cert.Subject.CommonName, n)
	}
	return sid, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
