package ca

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/meshtrust/meshtrust/identity"
)

// A SignOption says where the key of a certificate comes from and how its
// issuance was authorised and is recorded. Sign and Check take the same
// options; a provisioner's authorisation returns them.
type SignOption func(*signOptions)

// signOptions is what a signing's options add up to.
type signOptions struct {
	// The key source: exactly one of csr, pub and generate.
	csr      *x509.CertificateRequest
	pub      crypto.PublicKey
	generate bool
	sources  int
	// proven skips the CSR's own signature check.
	proven       bool
	exclusive    bool
	authorizedBy string
	// renews and enrolls choose the audit entry (see Renews, Enrolls).
	renews  string
	enrolls string
}

func optionsOf(opts []SignOption) signOptions {
	var o signOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// errKeySource refuses a signing given no key source, or more than one.
var errKeySource = errors.New("ca: a signing needs exactly one key source: FromCSR, ForPublicKey or WithGeneratedKey")

// FromCSR certifies the key of csr, whose signature proves that the
// requester holds it (checked unless ProvenPossession is given). The
// identity is csr's common name when the request names none.
func FromCSR(csr *x509.CertificateRequest) SignOption {
	return func(o *signOptions) { o.csr, o.sources = csr, o.sources+1 }
}

// ForPublicKey certifies pub with no CSR: a renewal that keeps the key of
// the certificate that authenticated it, as step-ca's renew does. The
// caller must have seen the requester prove possession of pub (see
// ProvenPossession); the request must name its identity.
func ForPublicKey(pub crypto.PublicKey) SignOption {
	return func(o *signOptions) { o.pub, o.sources, o.proven = pub, o.sources+1, true }
}

// WithGeneratedKey has the CA generate the key, and Sign write the key
// and certificate into the CA directory (see Config.IssuedCertPath:
// issued/<node-id>.crt for a node, issued/<cn>.crt otherwise, and .key).
// When a key for that name is already there it is reused, so issuing
// again renews the certificate under the same key. The request must name
// its identity.
func WithGeneratedKey() SignOption {
	return func(o *signOptions) { o.generate, o.sources = true, o.sources+1 }
}

// ProvenPossession says the caller has already seen the requester prove
// possession of the CSR's key, so its signature is not checked (again);
// every other rule of the policy applies. The caller must have seen one
// of: the key is that of the client certificate that authenticated the
// request's TLS connection (the handshake's CertificateVerify is a
// signature by that key over the handshake; the CSR's
// RawSubjectPublicKeyInfo must be byte for byte the certificate's), or
// the caller checked the CSR's own signature (csr.CheckSignature, or
// Check) and it verified.
func ProvenPossession() SignOption {
	return func(o *signOptions) { o.proven = true }
}

// Exclusive records the certificate only while its identity holds no
// unexpired, unrevoked certificate (store.Cert.Exclusive): a node's
// secret enrollment is won once, whichever meshd replica signs.
func Exclusive() SignOption {
	return func(o *signOptions) { o.exclusive = true }
}

// AuthorizedBy names the serial of the certificate whose holder asks (a
// renewal, a node minting its agent's certificate): the certificate is
// recorded only while that one is not revoked. Without it, an operator
// asks.
func AuthorizedBy(serial string) SignOption {
	return func(o *signOptions) { o.authorizedBy = serial }
}

// Renews says the issuance is the whole of a renewal of the certificate
// with serial old: its audit entry is then the renewal's (cert.renew,
// "serial <old> -> <new>"), so a renewal costs one entry rather than an
// issuance's and a renewal's.
func Renews(old string) SignOption {
	return func(o *signOptions) { o.renews = old }
}

// Enrolls says the issuance is the whole of a node's enrollment and how
// the node proved itself ("join token from 10.0.0.7"): its audit entry is
// then the enrollment's (node.enroll, "serial <new> via <how>"), one entry
// written with the certificate rather than an issuance's and then an
// enrollment's.
func Enrolls(how string) SignOption {
	return func(o *signOptions) { o.enrolls = how }
}

// NodeRequest asks for node's server and client certificate with its
// standard DNS names plus extraSANs. An invalid node id makes a request
// that Sign and Check refuse, and Sign audits.
func NodeRequest(node string, extraSANs ...string) Request {
	id, err := identity.NewNode(node)
	return Request{Profile: ProfileNode, Identity: id, ExtraSANs: extraSANs, invalid: err}
}

// ExtraSANs are the SANs of leaf, a certificate of node id, beyond the
// ones a node's certificate always carries (its standard DNS names and its
// SPIFFE ID): the operator-granted ones a renewal carries over, as
// "DNS:x", "IP:x" and "URI:x". Nil for any other kind of identity.
func ExtraSANs(leaf *x509.Certificate, id identity.Identity) []string {
	if id.Kind != identity.KindNode {
		return nil
	}
	std := map[string]bool{}
	for _, d := range identity.NodeDNSNames(id.Node) {
		std[d] = true
	}
	var out []string
	for _, d := range leaf.DNSNames {
		if !std[d] {
			out = append(out, "DNS:"+d)
		}
	}
	for _, ip := range leaf.IPAddresses {
		out = append(out, "IP:"+ip.String())
	}
	for _, u := range leaf.URIs {
		if u.Scheme != "spiffe" {
			out = append(out, "URI:"+u.String())
		}
	}
	return out
}

// AgentRequest asks for the client certificate of agent on node; see
// NodeRequest for invalid names.
func AgentRequest(agent, node string) Request {
	id, err := identity.NewAgent(agent, node)
	return Request{Profile: ProfileAgent, Identity: id, invalid: err}
}

// ClientRequest asks for an external user's client certificate; see
// NodeRequest for invalid names.
func ClientRequest(user string) Request {
	id, err := identity.NewExternal(user)
	return Request{Profile: ProfileClient, Identity: id, invalid: err}
}

// key returns the public key a signing certifies (nil when the CA is to
// generate it). Its errors refuse the request before any policy runs and
// are not audited.
func (o *signOptions) key(req Request) (crypto.PublicKey, error) {
	if o.sources != 1 {
		return nil, errKeySource
	}
	if o.csr == nil && o.pub == nil && !o.generate {
		return nil, fmt.Errorf("%w: no request", ErrBadCSR) // FromCSR(nil) or ForPublicKey(nil)
	}
	if o.csr != nil {
		return o.csr.PublicKey, nil
	}
	if req.Identity.IsZero() {
		return nil, policyErr("no identity to issue for")
	}
	return o.pub, nil
}
