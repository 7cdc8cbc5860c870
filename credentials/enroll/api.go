package enroll

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// Bundle is a certificate meshd issued, with the chain that verifies it.
type Bundle struct {
	// Certificate is the issued leaf.
	Certificate *x509.Certificate
	// Chain is the issuing intermediate first and the root last.
	Chain []*x509.Certificate
	// Serial is Certificate's serial in lowercase hex, as revocations name it.
	Serial string
	// NotAfter is when Certificate expires.
	NotAfter time.Time
	// RenewAfter is when meshd suggests renewing Certificate (the
	// answer's renew_after): 2/3 into its life by default, sooner when
	// its intermediate was tainted. Zero when meshd did not say (before
	// 0.4). It is never before Certificate's NotBefore nor after its
	// NotAfter.
	RenewAfter time.Time
}

// CertificatePEM returns the leaf followed by the intermediates of Chain
// (the root left out), the form a TLS server or client presents.
func (b *Bundle) CertificatePEM() []byte {
	return pemfile.EncodeCerts(append([]*x509.Certificate{b.Certificate}, intermediates(b.Chain)...)...)
}

// ChainPEM returns Chain in PEM, the issuing intermediate first.
func (b *Bundle) ChainPEM() []byte { return pemfile.EncodeCerts(b.Chain...) }

// TLSCertificate returns the certificate with key as a tls.Certificate
// presenting the leaf and its intermediates.
func (b *Bundle) TLSCertificate(key crypto.Signer) tls.Certificate {
	return tlsCertificate(b.Certificate, intermediates(b.Chain), key)
}

func tlsCertificate(leaf *x509.Certificate, inter []*x509.Certificate, key crypto.Signer) tls.Certificate {
	der := [][]byte{leaf.Raw}
	for _, c := range inter {
		der = append(der, c.Raw)
	}
	return tls.Certificate{Certificate: der, PrivateKey: key, Leaf: leaf}
}

// intermediates returns the certificates of chain that are not roots.
func intermediates(chain []*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range chain {
		if !selfSigned(c) {
			out = append(out, c)
		}
	}
	return out
}

// AgentKey is an agent of the node and the key its renewed certificate is
// for.
type AgentKey struct {
	ID  string
	Key crypto.Signer
}

// Renewal is what POST /renew returned.
type Renewal struct {
	// Node is the caller's renewed certificate.
	Node *Bundle
	// Agents are the renewed agent certificates by agent id. An agent
	// meshd did not re-issue is missing.
	Agents map[string]*Bundle
}

// Enroll obtains the node certificate of nodeID for key, presenting the
// bootstrap credential (the mesh's bootstrap secret or a join token) as
// "Authorization: Bearer". This is the only call that sends the
// credential; every later one is mTLS with the certificate returned.
//
// A refusal is an *Error wrapping ErrBadRequest, ErrUnauthorized,
// ErrForbidden, ErrConflict or ErrRateLimited.
func (c *Client) Enroll(ctx context.Context, credential, nodeID string, key crypto.Signer) (*Bundle, error) {
	id, err := identity.NewNode(nodeID)
	if err != nil {
		return nil, err
	}
	if credential == "" {
		return nil, errors.New("enroll: no bootstrap credential (give the bootstrap secret or a join token)")
	}
	csr, err := newCSR(id.CommonName(), key)
	if err != nil {
		return nil, err
	}
	var out meshapi.IssuedCert
	hdr := http.Header{"Authorization": {"Bearer " + credential}}
	if err := c.call(ctx, http.MethodPost, meshapi.PathEnroll, nil, hdr, meshapi.EnrollRequest{NodeID: nodeID, CSR: csr}, &out); err != nil {
		return nil, err
	}
	return c.checkIssued(ctx, meshapi.PathEnroll, out, nil, id.CommonName(), key)
}

// AgentCert obtains the certificate of agent agentID on the node that
// nodeCert identifies, for key, over mTLS with nodeCert. meshd issues only
// <agent-id>@<the node's id>.
func (c *Client) AgentCert(ctx context.Context, nodeCert tls.Certificate, agentID string, key crypto.Signer) (*Bundle, error) {
	node, err := nodeIdentity(nodeCert)
	if err != nil {
		return nil, err
	}
	id, err := identity.NewAgent(agentID, node.Node)
	if err != nil {
		return nil, err
	}
	csr, err := newCSR(id.CommonName(), key)
	if err != nil {
		return nil, err
	}
	var out meshapi.IssuedCert
	if err := c.call(ctx, http.MethodPost, meshapi.PathAgentCert, &nodeCert, nil, meshapi.AgentCertRequest{AgentID: agentID, CSR: csr}, &out); err != nil {
		return nil, err
	}
	return c.checkIssued(ctx, meshapi.PathAgentCert, out, nil, id.CommonName(), key)
}

// Renew renews current, the caller's own certificate, for key (the same
// key or a new one), over mTLS with current. A node's call may carry its
// agents, which meshd re-issues in the same call, each for its AgentKey's
// key. A revoked or expired certificate cannot renew (ErrForbidden, or a
// refused handshake).
func (c *Client) Renew(ctx context.Context, current tls.Certificate, key crypto.Signer, agents []AgentKey) (*Renewal, error) {
	leaf, err := leafOf(current)
	if err != nil {
		return nil, err
	}
	cn := leaf.Subject.CommonName
	self, err := identity.Parse(cn)
	if err != nil {
		return nil, fmt.Errorf("renew: the current certificate is not a mesh identity: %w", err)
	}
	// The same key needs no CSR: the handshake proves it to meshd.
	var body meshapi.RenewRequest
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		if body.CSR, err = newCSR(cn, key); err != nil {
			return nil, err
		}
	}
	want := make(map[string]AgentKey, len(agents))
	for _, a := range agents {
		if self.Kind != identity.KindNode {
			return nil, fmt.Errorf("renew: only a node certificate renews agents; %q is a %s", cn, self.Kind)
		}
		aid, err := identity.NewAgent(a.ID, self.Node)
		if err != nil {
			return nil, err
		}
		acsr, err := newCSR(aid.CommonName(), a.Key)
		if err != nil {
			return nil, err
		}
		body.Agents = append(body.Agents, meshapi.AgentCertRequest{AgentID: a.ID, CSR: acsr})
		want[a.ID] = a
	}
	var out meshapi.RenewResponse
	if err := c.call(ctx, http.MethodPost, meshapi.PathRenew, &current, nil, body, &out); err != nil {
		return nil, err
	}
	node, err := c.checkIssued(ctx, meshapi.PathRenew, out.IssuedCert, nil, cn, key)
	if err != nil {
		return nil, err
	}
	r := &Renewal{Node: node, Agents: make(map[string]*Bundle, len(out.Agents))}
	for _, a := range out.Agents {
		ak, ok := want[a.AgentID]
		if !ok {
			return nil, fmt.Errorf("%w: meshd renewed agent %q, which the request did not name", ErrUntrustedServer, a.AgentID)
		}
		b, err := c.checkIssued(ctx, meshapi.PathRenew, a, node.Chain, a.AgentID+"@"+self.Node, ak.Key)
		if err != nil {
			return nil, err
		}
		r.Agents[a.AgentID] = b
	}
	return r, nil
}

// Health calls meshd's GET /health over mTLS with cert and reports an
// error unless meshd answers 200: it proves that cert is accepted.
func (c *Client) Health(ctx context.Context, cert tls.Certificate) error {
	return c.call(ctx, http.MethodGet, "/health", &cert, nil, nil, nil)
}

// RenewAfter asks meshd, with GET /health over mTLS with cert, whether it
// wants cert renewed early: the time its Meshtrust-Renew-After header
// names, which meshd sends only while cert's intermediate is tainted;
// zero when it sends none (or predates the header). A time that does not
// parse, or lies outside cert's validity, is clamped into it or ignored:
// it only ever brings a renewal forward.
func (c *Client) RenewAfter(ctx context.Context, cert tls.Certificate) (time.Time, error) {
	leaf, err := leafOf(cert)
	if err != nil {
		return time.Time{}, err
	}
	hdr, err := c.callHeader(ctx, http.MethodGet, "/health", &cert, nil, nil, nil)
	if err != nil {
		return time.Time{}, err
	}
	return ParseRenewAfter(hdr.Get(meshapi.HeaderRenewAfter), leaf), nil
}

// ParseRenewAfter reads a Meshtrust-Renew-After header (RFC 3339) for
// leaf: zero when it is empty or does not parse, else the time clamped
// into leaf's validity.
func ParseRenewAfter(v string, leaf *x509.Certificate) time.Time {
	if v == "" {
		return time.Time{}
	}
	at, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}
	}
	return clampInto(at, leaf)
}

// clampInto returns at within leaf's validity; zero stays zero.
func clampInto(at time.Time, leaf *x509.Certificate) time.Time {
	switch {
	case at.IsZero():
		return at
	case at.Before(leaf.NotBefore):
		return leaf.NotBefore
	case at.After(leaf.NotAfter):
		return leaf.NotAfter
	}
	return at
}

// checkIssued turns an issued certificate of meshd into a Bundle after
// checking that it is what was asked for: the requested name, the
// requester's key, a chain to the trusted roots. A certificate that fails
// is never handed on, so it is never written.
func (c *Client) checkIssued(ctx context.Context, route string, in meshapi.IssuedCert, chain []*x509.Certificate, cn string, key crypto.Signer) (*Bundle, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s answered with %s", ErrUntrustedServer, route, fmt.Sprintf(format, args...))
	}
	certs, err := pemfile.ParseCerts([]byte(in.Certificate))
	if err != nil {
		return nil, bad("an unreadable certificate: %v", err)
	}
	leaf := certs[0]
	if in.Chain != "" {
		if chain, err = pemfile.ParseCerts([]byte(in.Chain)); err != nil {
			return nil, bad("an unreadable chain: %v", err)
		}
	}
	if len(chain) == 0 {
		return nil, bad("no chain")
	}
	if leaf.Subject.CommonName != cn {
		return nil, bad("a certificate for %q, not %q", leaf.Subject.CommonName, cn)
	}
	roots, err := c.roots(ctx)
	if err != nil {
		return nil, err
	}
	// Checked at a moment inside the certificate's window: its validity is
	// meshd's call, and a node whose clock is a little behind must not
	// throw away a certificate issued a second ago.
	if _, err := trust.VerifyInWindow(leaf, roots, append(certs[1:], chain...), time.Now()); err != nil {
		return nil, bad("a certificate that does not chain to the trusted root: %v", err)
	}
	if !samePublicKey(key.Public(), leaf.PublicKey) {
		return nil, bad("a certificate for another key than the one in the request")
	}
	return &Bundle{Certificate: leaf, Chain: chain, Serial: leaf.SerialNumber.Text(16), NotAfter: leaf.NotAfter, RenewAfter: clampInto(in.RenewAfter, leaf)}, nil
}

// leafOf returns the parsed leaf of cert.
func leafOf(cert tls.Certificate) (*x509.Certificate, error) {
	if cert.Leaf != nil {
		return cert.Leaf, nil
	}
	if len(cert.Certificate) == 0 {
		return nil, errors.New("enroll: empty TLS certificate")
	}
	return x509.ParseCertificate(cert.Certificate[0])
}

// nodeIdentity returns the node a node certificate identifies.
func nodeIdentity(cert tls.Certificate) (identity.Identity, error) {
	leaf, err := leafOf(cert)
	if err != nil {
		return identity.Identity{}, err
	}
	id, err := identity.Parse(leaf.Subject.CommonName)
	if err != nil {
		return identity.Identity{}, err
	}
	if id.Kind != identity.KindNode {
		return identity.Identity{}, fmt.Errorf("%q is a %s certificate; agent certificates are minted with the node's certificate", leaf.Subject.CommonName, id.Kind)
	}
	return id, nil
}
