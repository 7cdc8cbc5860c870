package identity_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/identity"
)

var td = spiffeid.RequireTrustDomainFromString("mesh.local")

func TestValidateID(t *testing.T) {
	t.Parallel()
	valid := []string{
		"a",
		"z",
		"0",
		"ct111",
		"opus",
		"a-b",
		"a--b",
		"external", // reserved only as a node id, not as an id
		"123456",
		strings.Repeat("a", 63),
		"a" + strings.Repeat("-", 61) + "z",
	}
	for _, s := range valid {
		if err := identity.ValidateID(s); err != nil {
			t.Errorf("ValidateID(%q) = %v, want nil", s, err)
		}
	}

	invalid := []struct {
		in string
		// msg, if set, must appear in the error so the user learns what to fix.
		msg string
	}{
		{in: "", msg: "empty"},
		{in: "../x"},
		{in: "Opus", msg: `'O'`},
		{in: strings.Repeat("a", 64), msg: "64 characters"},
		{in: strings.Repeat("a", 1000), msg: "1000 characters"},
		{in: "a..b"},
		{in: "*"},
		{in: "*.x"},
		{in: "-a", msg: "'-'"},
		{in: "a-", msg: "'-'"},
		{in: "-"},
		{in: "a_b", msg: "'_'"},
		{in: "a b"},
		{in: " a"},
		{in: "a\n"},
		{in: "a\x00"},
		{in: "café", msg: "'é'"},
		{in: "ñ"},
		{in: "日本"},
		{in: "ａ"}, // fullwidth a
		{in: "a\xffb"},
		{in: "a.b", msg: "'.'"},
		{in: "a@b", msg: "'@'"},
		{in: "a/b"},
		{in: "a:b"},
	}
	for _, tc := range invalid {
		err := identity.ValidateID(tc.in)
		if !errors.Is(err, identity.ErrInvalidID) {
			t.Errorf("ValidateID(%q) = %v, want an error wrapping ErrInvalidID", tc.in, err)
			continue
		}
		if tc.msg != "" && !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("ValidateID(%q) = %q, want the message to mention %s", tc.in, err, tc.msg)
		}
	}
}

func TestConstructors(t *testing.T) {
	t.Parallel()
	if _, err := identity.NewNode("external"); !errors.Is(err, identity.ErrInvalidID) {
		t.Errorf("NewNode(%q) = %v, want ErrInvalidID (reserved)", "external", err)
	}
	if _, err := identity.NewAgent("opus", "external"); !errors.Is(err, identity.ErrInvalidID) {
		t.Errorf("NewAgent(opus, external) = %v, want ErrInvalidID (reserved)", err)
	}
	if _, err := identity.NewAgent("Opus", "ct111"); !errors.Is(err, identity.ErrInvalidID) {
		t.Errorf("NewAgent(Opus, ct111) = %v, want ErrInvalidID", err)
	}
	if _, err := identity.NewExternal(""); !errors.Is(err, identity.ErrInvalidID) {
		t.Errorf("NewExternal(\"\") = %v, want ErrInvalidID", err)
	}
	if id, err := identity.NewExternal("external"); err != nil || id.CommonName() != "external@external" {
		t.Errorf("NewExternal(external) = %v, %v; want external@external", id, err)
	}
	var zero identity.Identity
	if !zero.IsZero() || zero.CommonName() != "" {
		t.Errorf("zero Identity: IsZero=%v CommonName=%q, want true and empty", zero.IsZero(), zero.CommonName())
	}
}

func TestKind(t *testing.T) {
	t.Parallel()
	for k, want := range map[identity.Kind]string{identity.KindNode: "node", identity.KindAgent: "agent", identity.KindExternal: "external"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
	if got := identity.Kind(0).String(); got != "kind(0)" {
		t.Errorf("Kind(0).String() = %q, want kind(0)", got)
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	valid := []struct {
		cn   string
		want identity.Identity
	}{
		{"ct111.mesh", identity.Identity{Kind: identity.KindNode, Node: "ct111"}},
		{"a.mesh", identity.Identity{Kind: identity.KindNode, Node: "a"}},
		{"mesh.mesh", identity.Identity{Kind: identity.KindNode, Node: "mesh"}},
		{"ct111-mcp.mesh", identity.Identity{Kind: identity.KindNode, Node: "ct111-mcp"}},
		{strings.Repeat("n", 63) + ".mesh", identity.Identity{Kind: identity.KindNode, Node: strings.Repeat("n", 63)}},
		{"opus@ct111", identity.Identity{Kind: identity.KindAgent, Node: "ct111", Name: "opus"}},
		{"a-b@c-d", identity.Identity{Kind: identity.KindAgent, Node: "c-d", Name: "a-b"}},
		{"mesh@mesh", identity.Identity{Kind: identity.KindAgent, Node: "mesh", Name: "mesh"}},
		{"alice@external", identity.Identity{Kind: identity.KindExternal, Name: "alice"}},
		{"external@external", identity.Identity{Kind: identity.KindExternal, Name: "external"}},
	}
	for _, tc := range valid {
		got, err := identity.Parse(tc.cn)
		if err != nil {
			t.Errorf("Parse(%q) = %v, want %+v", tc.cn, err, tc.want)
			continue
		}
		if got != tc.want {
			t.Errorf("Parse(%q) = %+v, want %+v", tc.cn, got, tc.want)
		}
		if got.CommonName() != tc.cn || got.String() != tc.cn {
			t.Errorf("Parse(%q).CommonName() = %q, String() = %q; want both %q", tc.cn, got.CommonName(), got.String(), tc.cn)
		}
		again, err := identity.Parse(got.CommonName())
		if err != nil || again != got {
			t.Errorf("Parse(Parse(%q).CommonName()) = %+v, %v; want %+v", tc.cn, again, err, got)
		}
	}

	invalid := []string{
		"",
		".mesh",
		"external.mesh", // reserved node
		"opus@external.mesh",
		"opus@ct111.mesh",
		"opus@",
		"@ct111",
		"@",
		"@external",
		"a@b@c",
		"a@b@external",
		"ct111",
		"Opus@ct111",
		"opus@CT111",
		"ct111.MESH",
		"CT111.mesh",
		"x.mesh.mesh",
		"x.y.mesh",
		"ct111.mesh.",
		" ct111.mesh",
		"ct111.mesh ",
		"opus @ct111",
		"-a.mesh",
		"a-.mesh",
		"opus@-ct111",
		"*.mesh",
		"*@ct111",
		"../x.mesh",
		"alice@External",
		"spiffe://mesh.local/node/ct111",
		strings.Repeat("n", 64) + ".mesh",
		"opus@" + strings.Repeat("n", 64),
		"café@ct111",
	}
	for _, cn := range invalid {
		got, err := identity.Parse(cn)
		if !errors.Is(err, identity.ErrInvalidName) {
			t.Errorf("Parse(%q) = %+v, %v; want an error wrapping ErrInvalidName", cn, got, err)
			continue
		}
		if !got.IsZero() {
			t.Errorf("Parse(%q) failed but returned non-zero %+v", cn, got)
		}
		if !strings.Contains(err.Error(), "identity:") {
			t.Errorf("Parse(%q) error %q does not say which package refused it", cn, err)
		}
	}
}

func TestSPIFFEID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		cn   string
		want string
	}{
		{"ct111.mesh", "spiffe://mesh.local/node/ct111"},
		{"opus@ct111", "spiffe://mesh.local/agent/ct111/opus"},
		{"alice@external", "spiffe://mesh.local/external/alice"},
	}
	for _, tc := range tests {
		id, err := identity.Parse(tc.cn)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.cn, err)
		}
		sid, err := id.SPIFFEID(td)
		if err != nil {
			t.Errorf("%v.SPIFFEID(%v) = %v", id, td, err)
			continue
		}
		if sid.String() != tc.want {
			t.Errorf("%v.SPIFFEID(%v) = %q, want %q", id, td, sid, tc.want)
		}
		back, err := identity.FromSPIFFEID(sid)
		if err != nil || back != id {
			t.Errorf("FromSPIFFEID(%q) = %+v, %v; want %+v", sid, back, err, id)
		}
	}

	var zero identity.Identity
	if _, err := zero.SPIFFEID(td); !errors.Is(err, identity.ErrInvalidName) {
		t.Errorf("zero.SPIFFEID() = %v, want ErrInvalidName", err)
	}
}

func TestFromSPIFFEIDRefusals(t *testing.T) {
	t.Parallel()
	refused := []string{
		"spiffe://mesh.local",
		"spiffe://mesh.local/node",
		"spiffe://mesh.local/node/ct111/extra",
		"spiffe://mesh.local/node/external", // reserved node
		"spiffe://mesh.local/node/CT111",
		"spiffe://mesh.local/node/a_b",
		"spiffe://mesh.local/node/ct111.mesh",
		"spiffe://mesh.local/agent/ct111",
		"spiffe://mesh.local/agent/ct111/opus/x",
		"spiffe://mesh.local/agent/external/opus",
		"spiffe://mesh.local/agent/ct111/Opus",
		"spiffe://mesh.local/external",
		"spiffe://mesh.local/external/alice/x",
		"spiffe://mesh.local/external/a.b",
		"spiffe://mesh.local/user/alice",
		"spiffe://mesh.local/Node/ct111",
		"spiffe://mesh.local/workload/ct111",
	}
	for _, s := range refused {
		sid := spiffeid.RequireFromString(s)
		got, err := identity.FromSPIFFEID(sid)
		if !errors.Is(err, identity.ErrInvalidName) {
			t.Errorf("FromSPIFFEID(%q) = %+v, %v; want an error wrapping ErrInvalidName", s, got, err)
		}
	}
	if got, err := identity.FromSPIFFEID(spiffeid.ID{}); !errors.Is(err, identity.ErrInvalidName) {
		t.Errorf("FromSPIFFEID(zero) = %+v, %v; want ErrInvalidName", got, err)
	}
}

func TestNodeDNSNames(t *testing.T) {
	t.Parallel()
	got := identity.NodeDNSNames("ct111")
	want := []string{"ct111.mesh", "ct111-mcp.mesh", "ct111-runtime-rpc.mesh"}
	if !slices.Equal(got, want) {
		t.Errorf("NodeDNSNames(ct111) = %q, want %q", got, want)
	}
	// The node's own common name must be among its DNS names, or
	// FromCertificate would refuse every node certificate the CA issues.
	if !slices.Contains(got, "ct111.mesh") {
		t.Errorf("NodeDNSNames(ct111) = %q lacks the node's CN", got)
	}
	// Every listener name must itself parse as a node, so it is a DNS name
	// the mesh can resolve.
	for _, n := range got {
		if id, err := identity.Parse(n); err != nil || id.Kind != identity.KindNode {
			t.Errorf("NodeDNSNames entry %q does not parse as a node: %+v, %v", n, id, err)
		}
	}
}

// certSpec describes a test certificate.
type certSpec struct {
	cn   string
	dns  []string
	uris []string
}

// newCert returns a parsed self-signed certificate built from spec, so the
// test sees the names as they come out of a real DER encoding.
func newCert(t *testing.T, spec certSpec) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: spec.cn},
		NotBefore:    time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     spec.dns,
	}
	for _, s := range spec.uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("url.Parse(%q): %v", s, err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("ParseCertificate: %v", err)
	}
	return cert
}

func TestFromCertificate(t *testing.T) {
	t.Parallel()
	node := identity.Identity{Kind: identity.KindNode, Node: "ct111"}
	agent := identity.Identity{Kind: identity.KindAgent, Node: "ct111", Name: "opus"}
	external := identity.Identity{Kind: identity.KindExternal, Name: "alice"}

	tests := []struct {
		name    string
		spec    certSpec
		want    identity.Identity
		wantErr error
	}{
		{
			name: "node",
			spec: certSpec{
				cn:   "ct111.mesh",
				dns:  identity.NodeDNSNames("ct111"),
				uris: []string{"spiffe://mesh.local/node/ct111"},
			},
			want: node,
		},
		{
			name: "node with only its own DNS name",
			spec: certSpec{
				cn:   "ct111.mesh",
				dns:  []string{"ct111.mesh"},
				uris: []string{"spiffe://mesh.local/node/ct111"},
			},
			want: node,
		},
		{
			name: "node with a non-SPIFFE URI too",
			spec: certSpec{
				cn:   "ct111.mesh",
				dns:  identity.NodeDNSNames("ct111"),
				uris: []string{"https://ct111.mesh/", "spiffe://mesh.local/node/ct111"},
			},
			want: node,
		},
		{
			name: "agent",
			spec: certSpec{
				cn:   "opus@ct111",
				uris: []string{"spiffe://mesh.local/agent/ct111/opus"},
			},
			want: agent,
		},
		{
			name: "external",
			spec: certSpec{
				cn:   "alice@external",
				uris: []string{"spiffe://mesh.local/external/alice"},
			},
			want: external,
		},
		{
			name: "no URI SAN",
			spec: certSpec{
				cn:  "ct111.mesh",
				dns: identity.NodeDNSNames("ct111"),
			},
			wantErr: identity.ErrMismatch,
		},
		{
			name: "no SPIFFE URI SAN",
			spec: certSpec{
				cn:   "opus@ct111",
				uris: []string{"https://mesh.local/agent/ct111/opus"},
			},
			wantErr: identity.ErrMismatch,
		},
		{
			name: "two SPIFFE URI SANs",
			spec: certSpec{
				cn: "opus@ct111",
				uris: []string{
					"spiffe://mesh.local/agent/ct111/opus",
					"spiffe://mesh.local/agent/ct111/sonnet",
				},
			},
			wantErr: identity.ErrMismatch,
		},
		{
			name: "the same SPIFFE URI SAN twice",
			spec: certSpec{
				cn: "opus@ct111",
				uris: []string{
					"spiffe://mesh.local/agent/ct111/opus",
					"spiffe://mesh.local/agent/ct111/opus",
				},
			},
			wantErr: identity.ErrMismatch,
		},
		{
			name: "SPIFFE ID names another agent",
			spec: certSpec{
				cn:   "opus@ct111",
				uris: []string{"spiffe://mesh.local/agent/ct111/sonnet"},
			},
			wantErr: identity.ErrMismatch,
		},
		{
			name: "SPIFFE ID names the agent on another node",
			spec: certSpec{
				cn:   "opus@ct111",
				uris: []string{"spiffe://mesh.local/agent/ct112/opus"},
			},
			wantErr: identity.ErrMismatch,
		},
		{
			name: "SPIFFE ID names the node the agent runs on",
			spec: certSpec{
				cn:   "opus@ct111",
				uris: []string{"spiffe://mesh.local/node/ct111"},
			},
			wantErr: identity.ErrMismatch,
		},
		{
			name: "SPIFFE ID names an external user of the same name",
			spec: certSpec{
				cn:   "alice@external",
				uris: []string{"spiffe://mesh.local/agent/external/alice"},
			},
			wantErr: identity.ErrMismatch,
		},
		{
			name: "wrong trust domain",
			spec: certSpec{
				cn:   "ct111.mesh",
				dns:  identity.NodeDNSNames("ct111"),
				uris: []string{"spiffe://other.local/node/ct111"},
			},
			wantErr: identity.ErrMismatch,
		},
		{
			name: "malformed SPIFFE URI",
			spec: certSpec{
				cn:   "alice@external",
				uris: []string{"spiffe://mesh.local/external/alice?admin=1"},
			},
			wantErr: identity.ErrMismatch,
		},
		{
			name: "node cert lacking its DNS SAN",
			spec: certSpec{
				cn:   "ct111.mesh",
				dns:  []string{"ct111-mcp.mesh", "ct111-runtime-rpc.mesh"},
				uris: []string{"spiffe://mesh.local/node/ct111"},
			},
			wantErr: identity.ErrMismatch,
		},
		{
			name: "node cert with another node's DNS SANs",
			spec: certSpec{
				cn:   "ct111.mesh",
				dns:  identity.NodeDNSNames("ct112"),
				uris: []string{"spiffe://mesh.local/node/ct111"},
			},
			wantErr: identity.ErrMismatch,
		},
		{
			name: "CN is not an identity",
			spec: certSpec{
				cn:   "ct111",
				dns:  identity.NodeDNSNames("ct111"),
				uris: []string{"spiffe://mesh.local/node/ct111"},
			},
			wantErr: identity.ErrInvalidName,
		},
		{
			name: "empty CN",
			spec: certSpec{
				uris: []string{"spiffe://mesh.local/node/ct111"},
			},
			wantErr: identity.ErrInvalidName,
		},
		{
			name: "CN names the reserved node",
			spec: certSpec{
				cn:   "external.mesh",
				dns:  identity.NodeDNSNames("external"),
				uris: []string{"spiffe://mesh.local/node/external"},
			},
			wantErr: identity.ErrInvalidName,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cert := newCert(t, tc.spec)
			got, err := identity.FromCertificate(cert, td)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("FromCertificate() = %+v, %v; want an error wrapping %v", got, err, tc.wantErr)
				}
				if !got.IsZero() {
					t.Errorf("FromCertificate() failed but returned non-zero %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("FromCertificate() = %v, want %+v", err, tc.want)
			}
			if got != tc.want {
				t.Errorf("FromCertificate() = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestFromCertificateNil(t *testing.T) {
	t.Parallel()
	if _, err := identity.FromCertificate(nil, td); !errors.Is(err, identity.ErrInvalidName) {
		t.Errorf("FromCertificate(nil) = %v, want ErrInvalidName", err)
	}
}
