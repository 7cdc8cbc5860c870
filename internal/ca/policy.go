package ca

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/identity"
)

// Profile names a kind of leaf certificate. The profile, never the CSR,
// decides a certificate's subject, SANs, key usages and lifetime.
type Profile string

// The leaf profiles.
const (
	// ProfileNode is a node's server and client certificate; its SANs cover
	// every listener the node exposes.
	ProfileNode Profile = "node"
	// ProfileAgent is an agent's client certificate.
	ProfileAgent Profile = "agent"
	// ProfileClient is an external user's client certificate.
	ProfileClient Profile = "client"
)

// ParseProfile parses a profile name.
func ParseProfile(s string) (Profile, error) {
	switch p := Profile(s); p {
	case ProfileNode, ProfileAgent, ProfileClient:
		return p, nil
	}
	return "", fmt.Errorf("unknown profile %q (want node, agent or client)", s)
}

// Kind returns the identity kind a profile issues for.
func (p Profile) Kind() identity.Kind {
	switch p {
	case ProfileNode:
		return identity.KindNode
	case ProfileAgent:
		return identity.KindAgent
	case ProfileClient:
		return identity.KindExternal
	}
	return 0
}

// Request is what the CA is asked to sign: whom for, under which
// profile. How the key is given and how the issuance was authorised are
// SignOptions.
type Request struct {
	Profile Profile
	// Identity is who the certificate is for. When zero, Sign derives it
	// from the CSR's common name, which must then be of the profile's kind.
	Identity identity.Identity
	// ExtraSANs are SANs an operator grants a node beyond its standard
	// names: "DNS:x", "IP:x", "URI:x", or a bare DNS name. Only the node
	// profile accepts them.
	ExtraSANs []string
	// TTL is the requested lifetime; zero means the profile's default,
	// more than the default is refused.
	TTL time.Duration
	// invalid is why the name a NodeRequest, AgentRequest or
	// ClientRequest was built from is no identity: Sign refuses it.
	invalid error
}

// signing is the state a policy's options work on.
type signing struct {
	req  Request
	csr  *x509.CertificateRequest // nil when the CA generated the key
	tmpl *x509.Certificate
	now  time.Time
	max  time.Duration
	td   spiffeid.TrustDomain
	// ceiling is the issuing intermediate's expiry.
	ceiling time.Time
	// proven is set when the caller has already verified that the
	// requester holds csr's key (see ProvenPossession): the CSR's own signature
	// is then not checked a second time.
	proven bool
}

// A csrValidator checks a certificate request before anything is built.
type csrValidator interface {
	validateCSR(s *signing) error
}

// A modifier writes part of the certificate template.
type modifier interface {
	modify(s *signing) error
}

// A certValidator checks the finished template before it is signed.
type certValidator interface {
	validateCert(s *signing) error
}

// The policy every leaf goes through, in order. A new rule is a new small
// value in this list.
var leafPolicy = []any{
	csrSignature{},
	csrKeyStrength{},
	csrExtensions{},
	csrSubject{},
	csrSANs{},
	subjectModifier{},
	sansModifier{},
	usageModifier{},
	validityModifier{},
	lifetimeValidator{},
}

func applyPolicy(s *signing, policy []any) error {
	if s.csr != nil {
		for _, o := range policy {
			if v, ok := o.(csrValidator); ok {
				if err := v.validateCSR(s); err != nil {
					return err
				}
			}
		}
	}
	for _, o := range policy {
		if m, ok := o.(modifier); ok {
			if err := m.modify(s); err != nil {
				return err
			}
		}
	}
	for _, o := range policy {
		if v, ok := o.(certValidator); ok {
			if err := v.validateCert(s); err != nil {
				return err
			}
		}
	}
	return nil
}

func policyErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrPolicy}, args...)...)
}

// csrSignature proves the requester holds the private key.
type csrSignature struct{}

func (csrSignature) validateCSR(s *signing) error {
	if s.proven {
		return nil
	}
	if err := s.csr.CheckSignature(); err != nil {
		return fmt.Errorf("%w: signature does not verify (was the CSR altered, or signed with another key?): %v", ErrBadCSR, err)
	}
	return nil
}

// csrKeyStrength admits the key types the CA itself would generate.
type csrKeyStrength struct{}

func (csrKeyStrength) validateCSR(s *signing) error {
	return checkKey(s.csr.PublicKey)
}

func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() && k.Curve != elliptic.P521() {
			return policyErr("ECDSA curve %s is not accepted (use P-256, P-384 or P-521)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return policyErr("RSA key of %d bits is too small (at least 2048)", k.N.BitLen())
		}
		// Every verifier of the certificate pays for a large key, on
		// every handshake: 4096 bits is as far as the mesh goes.
		if k.N.BitLen() > 4096 {
			return policyErr("RSA key of %d bits is too large (at most 4096; prefer ECDSA P-256)", k.N.BitLen())
		}
	default:
		return policyErr("key type %T is not accepted (use ECDSA, Ed25519 or RSA 2048 to 4096)", pub)
	}
	return nil
}

var (
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidSAN              = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidSKI              = asn1.ObjectIdentifier{2, 5, 29, 14}
)

// csrExtensions refuses a CSR that asks to be a CA or that marks as
// critical an extension the CA does not understand. Requested key usages
// are ignored: the profile sets them.
type csrExtensions struct{}

func (csrExtensions) validateCSR(s *signing) error {
	for _, e := range s.csr.Extensions {
		switch {
		case e.Id.Equal(oidBasicConstraints):
			var bc struct {
				IsCA       bool `asn1:"optional"`
				MaxPathLen int  `asn1:"optional,default:-1"`
			}
			if _, err := asn1.Unmarshal(e.Value, &bc); err != nil {
				return fmt.Errorf("%w: malformed basic constraints: %v", ErrBadCSR, err)
			}
			if bc.IsCA {
				return policyErr("the request asks for CA:TRUE; the mesh CA only issues leaf certificates")
			}
		case e.Id.Equal(oidSAN), e.Id.Equal(oidKeyUsage), e.Id.Equal(oidExtKeyUsage), e.Id.Equal(oidSKI):
		default:
			if e.Critical {
				return policyErr("the request marks unknown extension %s critical", e.Id)
			}
		}
	}
	return nil
}

// csrSubject requires the CSR's common name, if any, to be the identity
// the certificate is for; with no identity given, the CN names it.
type csrSubject struct{}

func (csrSubject) validateCSR(s *signing) error {
	cn := s.csr.Subject.CommonName
	if s.req.Identity.IsZero() {
		if cn == "" {
			return policyErr("the request has no common name; name the identity to issue for")
		}
		id, err := identity.Parse(cn)
		if err != nil {
			return policyErr("%v", err)
		}
		s.req.Identity = id
	} else if cn != "" && cn != s.req.Identity.CommonName() {
		return policyErr("the request names %q but is being signed for %q; a certificate can only carry its own identity", cn, s.req.Identity.CommonName())
	}
	if s.req.Identity.Kind != s.req.Profile.Kind() {
		return kindMismatch(s.req)
	}
	return nil
}

// csrSANs requires every SAN the CSR asks for to be one the profile grants.
type csrSANs struct{}

func (csrSANs) validateCSR(s *signing) error {
	granted, err := grantedSANs(s)
	if err != nil {
		return err
	}
	var asked []string
	for _, d := range s.csr.DNSNames {
		asked = append(asked, "DNS:"+d)
	}
	for _, ip := range s.csr.IPAddresses {
		asked = append(asked, "IP:"+ip.String())
	}
	for _, u := range s.csr.URIs {
		asked = append(asked, "URI:"+u.String())
	}
	for _, e := range s.csr.EmailAddresses {
		asked = append(asked, "email:"+e)
	}
	for _, a := range asked {
		if !slices.Contains(granted, a) {
			return policyErr("the request asks for SAN %s, which %q is not granted (the profile grants %s)", a, s.req.Identity.CommonName(), strings.Join(granted, ", "))
		}
	}
	return nil
}

// grantedSANs is every SAN the certificate will carry.
func grantedSANs(s *signing) ([]string, error) {
	if s.req.Identity.IsZero() {
		return nil, policyErr("no identity to issue for")
	}
	sid, err := s.req.Identity.SPIFFEID(s.td)
	if err != nil {
		return nil, err
	}
	out := []string{"URI:" + sid.String()}
	if s.req.Profile == ProfileNode {
		for _, d := range identity.NodeDNSNames(s.req.Identity.Node) {
			out = append(out, "DNS:"+d)
		}
	}
	if len(s.req.ExtraSANs) > 0 && s.req.Profile != ProfileNode {
		return nil, policyErr("only node certificates carry extra SANs")
	}
	for _, e := range s.req.ExtraSANs {
		san, err := ParseSAN(e)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, san) {
			out = append(out, san)
		}
	}
	return out, nil
}

// ParseSAN normalises "DNS:x", "IP:x", "URI:x" or a bare DNS name.
func ParseSAN(s string) (string, error) {
	kind, val, ok := strings.Cut(s, ":")
	if !ok {
		kind, val = "DNS", s
	}
	switch strings.ToUpper(kind) {
	case "DNS":
		val = strings.ToLower(val)
		if !validDNSName(val) {
			return "", policyErr("SAN %q is not a DNS name (wildcards are not issued)", s)
		}
		return "DNS:" + val, nil
	case "IP":
		ip := net.ParseIP(val)
		if ip == nil {
			return "", policyErr("SAN %q is not an IP address", s)
		}
		return "IP:" + ip.String(), nil
	case "URI":
		u, err := url.Parse(val)
		if err != nil || u.Scheme == "" || (u.Host == "" && u.Opaque == "") {
			return "", policyErr("SAN %q is not an absolute URI", s)
		}
		if u.Scheme == "spiffe" {
			return "", policyErr("SAN %q: SPIFFE IDs are set by the CA from the identity, never requested", s)
		}
		return "URI:" + u.String(), nil
	}
	// "host:port" style input is not a SAN either.
	return "", policyErr("SAN %q: want DNS:<name>, IP:<address> or URI:<uri>", s)
}

func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if identity.ValidateID(label) != nil {
			return false
		}
	}
	return true
}

// subjectModifier sets the subject to the identity alone.
type subjectModifier struct{}

func (subjectModifier) modify(s *signing) error {
	s.tmpl.Subject.CommonName = s.req.Identity.CommonName()
	return nil
}

// sansModifier writes the granted SANs.
type sansModifier struct{}

func (sansModifier) modify(s *signing) error {
	granted, err := grantedSANs(s)
	if err != nil {
		return err
	}
	for _, san := range granted {
		kind, val, _ := strings.Cut(san, ":")
		switch kind {
		case "DNS":
			s.tmpl.DNSNames = append(s.tmpl.DNSNames, val)
		case "IP":
			s.tmpl.IPAddresses = append(s.tmpl.IPAddresses, net.ParseIP(val))
		case "URI":
			u, err := url.Parse(val)
			if err != nil {
				return err
			}
			s.tmpl.URIs = append(s.tmpl.URIs, u)
		}
	}
	return nil
}

// usageModifier sets key usages: nodes serve and call, agents and users
// only call.
type usageModifier struct{}

func (usageModifier) modify(s *signing) error {
	s.tmpl.BasicConstraintsValid = true
	s.tmpl.IsCA = false
	s.tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	if _, ok := s.tmpl.PublicKey.(*rsa.PublicKey); ok {
		s.tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	switch s.req.Profile {
	case ProfileNode:
		s.tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	default:
		s.tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	return nil
}

// validityModifier sets the validity window, never past the issuer's.
type validityModifier struct{}

func (validityModifier) modify(s *signing) error {
	ttl := s.req.TTL
	if ttl == 0 {
		ttl = s.max
	}
	s.tmpl.NotBefore = s.now.Add(-backdate)
	s.tmpl.NotAfter = s.now.Add(ttl)
	if s.tmpl.NotAfter.After(s.ceiling) {
		s.tmpl.NotAfter = s.ceiling
	}
	return nil
}

// lifetimeValidator refuses a lifetime longer than the profile allows.
type lifetimeValidator struct{}

func (lifetimeValidator) validateCert(s *signing) error {
	if s.req.TTL < 0 {
		return policyErr("lifetime %s is negative", s.req.TTL)
	}
	if s.req.TTL > s.max {
		return policyErr("requested lifetime %s is longer than the %s profile allows (%s)", FormatDuration(s.req.TTL), s.req.Profile, FormatDuration(s.max))
	}
	if !s.tmpl.NotAfter.After(s.now) {
		return policyErr("the issuing intermediate has expired; rotate it")
	}
	return nil
}

// kindMismatch refuses a request whose identity is not of its profile's kind.
func kindMismatch(req Request) error {
	return policyErr("%q is a %s identity, but the %s profile issues %s certificates (use --profile %s)",
		req.Identity.CommonName(), req.Identity.Kind, req.Profile, req.Profile.Kind(), profileFor(req.Identity.Kind))
}

func profileFor(k identity.Kind) Profile {
	switch k {
	case identity.KindNode:
		return ProfileNode
	case identity.KindAgent:
		return ProfileAgent
	}
	return ProfileClient
}

// FormatDuration prints whole days as "90d" and anything else as
// time.Duration does.
func FormatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	if d >= day && d%day == 0 {
		return fmt.Sprintf("%dd", d/day)
	}
	return d.String()
}
