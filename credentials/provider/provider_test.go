package provider_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/credentials/enroll/enrolltest"
	"github.com/meshtrust/meshtrust/credentials/provider"
	"github.com/meshtrust/meshtrust/credentials/spire"
	"github.com/meshtrust/meshtrust/credentials/vault"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/sourcetest"
	"github.com/meshtrust/meshtrust/internal/spiffetest"
	"github.com/meshtrust/meshtrust/pemfile"
)

// wait bounds every wait for something that should happen at once.
const wait = 10 * time.Second

// clearEnv unsets every variable FromEnv or a provider reads, so the
// caller's environment cannot choose for the test.
func clearEnv(t *testing.T) {
	for _, k := range []string{provider.EnvProvider, provider.EnvNodeDir, provider.EnvServer,
		credentials.EnvCert, credentials.EnvKey, credentials.EnvCA, spire.EnvSocket, "SPIFFE_ENDPOINT_SOCKET", provider.EnvSPIFFEID} {
		t.Setenv(k, "")
	}
}

// writeFiles writes an agent certificate, its key and the mesh root
// where the file provider's variables point.
func writeFiles(t *testing.T, s *enrolltest.Server, cn string) tls.Certificate {
	t.Helper()
	dir := t.TempDir()
	cert := s.Issue(t, cn)
	chain := pemfile.EncodeCerts(cert.Leaf, s.Intermediate)
	paths := map[string]string{credentials.EnvCert: filepath.Join(dir, "cert.pem"), credentials.EnvKey: filepath.Join(dir, "key.pem"), credentials.EnvCA: filepath.Join(dir, "ca.pem")}
	if err := os.WriteFile(paths[credentials.EnvCert], chain, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pemfile.WriteKey(paths[credentials.EnvKey], cert.PrivateKey.(*ecdsa.PrivateKey)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(paths[credentials.EnvCA], s.RootPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	for k, v := range paths {
		t.Setenv(k, v)
	}
	return cert
}

// enrolled enrolls a node new to the fake meshd (its name is returned)
// and mints agent opus, as `meshctl enroll` and `meshctl agent-cert`
// would, into a new node directory.
func enrolled(t *testing.T, s *enrolltest.Server) (enroll.Dir, string) {
	t.Helper()
	nodes++
	node := fmt.Sprintf("ct%d", nodes)
	token := fmt.Sprintf("token-%d", nodes)
	s.AddToken(token, node, time.Now().Add(time.Hour))
	c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
	key := pkitest.NewKey(t)
	b, err := c.Enroll(t.Context(), token, node, key)
	if err != nil {
		t.Fatal(err)
	}
	d := enroll.Dir(filepath.Join(t.TempDir(), "node"))
	if err := d.WriteNode(key, b); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteServer(s.URL); err != nil {
		t.Fatal(err)
	}
	akey := pkitest.NewKey(t)
	ab, err := c.AgentCert(t.Context(), b.TLSCertificate(key), "opus", akey)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteAgent("opus", akey, ab); err != nil {
		t.Fatal(err)
	}
	return d, node
}

// nodes counts the nodes enrolled, for their names; the tests that enroll
// do not run in parallel.
var nodes = 100

// withNode is WithNodeDir of a newly enrolled node.
func withNode(t *testing.T, s *enrolltest.Server) provider.Option {
	d, _ := enrolled(t, s)
	return provider.WithNodeDir(string(d))
}

func TestFromEnvSelects(t *testing.T) {
	s := enrolltest.NewServer(t, enrolltest.Config{})
	for _, tt := range []struct {
		name   string
		env    string // MCP_MESH_TLS_PROVIDER
		opts   []provider.Option
		enroll bool // the agent's certificate from the node directory, not the files
	}{
		{"file by default", "", nil, false},
		{"file by name", "file", nil, false},
		{"enroll by name", "enroll", nil, true},
		{"the option overrides the variable", "enroll", []provider.Option{provider.WithProvider("file")}, false},
		{"the option picks enroll over the default", "", []provider.Option{provider.WithProvider("enroll")}, true},
		{"surrounding space in the variable", " enroll\n", nil, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			writeFiles(t, s, "files@ct111")
			d, node := enrolled(t, s)
			t.Setenv(provider.EnvNodeDir, string(d))
			t.Setenv(provider.EnvProvider, tt.env)
			wantCN := "files@ct111"
			if tt.enroll {
				wantCN = "opus@" + node
			}
			src, err := provider.FromEnv(t.Context(), "opus", tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			c := sourcetest.Current(t, src)
			if cn := c.Certificate.Leaf.Subject.CommonName; cn != wantCN {
				t.Fatalf("certificate %q, want %q", cn, wantCN)
			}
			if len(c.Roots) == 0 || !c.Roots[0].Equal(s.Root) {
				t.Fatalf("roots %v, want the mesh root", c.Roots)
			}
		})
	}
}

func TestFromEnvSPIRE(t *testing.T) {
	clearEnv(t)
	w := spiffetest.NewServer(t, "")
	id := spiffeid.RequireFromString("spiffe://mcp-mesh.local/mesh-agent")
	w.SetSVID(id)
	t.Setenv(spire.EnvSocket, w.SocketPath())
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	src, err := provider.FromEnv(ctx, "opus", provider.WithProvider("spire"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	c := sourcetest.Current(t, src)
	if len(c.Certificate.Leaf.URIs) != 1 || c.Certificate.Leaf.URIs[0].String() != id.String() {
		t.Fatalf("SVID URIs %v, want %s", c.Certificate.Leaf.URIs, id)
	}
}

// TestFromEnvSPIRENoSVID: a workload the SPIRE agent has no identity for
// (PermissionDenied) gets spire.ErrNoSVID with the agent's answer once the
// wait for a first SVID is over, instead of waiting forever on a context
// that never ends.
func TestFromEnvSPIRENoSVID(t *testing.T) {
	clearEnv(t)
	provider.SetFirstSVIDTimeout(t, time.Second)
	w := spiffetest.NewServer(t, "")
	t.Setenv(spire.EnvSocket, w.SocketPath())
	_, err := provider.FromEnv(t.Context(), "opus", provider.WithProvider("spire"))
	if !errors.Is(err, spire.ErrNoSVID) || !strings.Contains(err.Error(), "no identity issued") {
		t.Fatalf("FromEnv without an SVID: %v, want spire.ErrNoSVID with the agent's PermissionDenied", err)
	}
}

func TestFromEnvRefuses(t *testing.T) {
	s := enrolltest.NewServer(t, enrolltest.Config{})
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T) []provider.Option
		agent string
		is    error
		wants []string
	}{
		{
			name:  "unknown provider in the variable",
			setup: func(t *testing.T) []provider.Option { t.Setenv(provider.EnvProvider, "ldap"); return nil },
			is:    provider.ErrUnknown,
			wants: []string{`"ldap"`, provider.EnvProvider, "file, vault, spire, enroll"},
		},
		{
			name:  "unknown provider in the option",
			setup: func(t *testing.T) []provider.Option { return []provider.Option{provider.WithProvider("FILE")} },
			is:    provider.ErrUnknown,
			wants: []string{`"FILE"`, "file, vault, spire, enroll"},
		},
		{
			name:  "vault",
			setup: func(t *testing.T) []provider.Option { t.Setenv(provider.EnvProvider, "vault"); return nil },
			wants: []string{vault.EnvAddr},
		},
		{
			name:  "file without variables",
			setup: func(t *testing.T) []provider.Option { return nil },
			wants: []string{credentials.EnvCert, credentials.EnvKey},
		},
		{
			name: "file with a key but no certificate",
			setup: func(t *testing.T) []provider.Option {
				writeFiles(t, s, "files@ct111")
				t.Setenv(credentials.EnvCert, "")
				return nil
			},
			wants: []string{credentials.EnvKey + " is set but " + credentials.EnvCert + " is not"},
		},
		{
			name: "spire without an agent",
			setup: func(t *testing.T) []provider.Option {
				t.Setenv(spire.EnvSocket, filepath.Join(t.TempDir(), "none.sock"))
				return []provider.Option{provider.WithProvider("spire")}
			},
			is:    spire.ErrNoSVID,
			wants: []string{"none.sock"},
		},
		{
			name: "spire with a SPIFFE ID that does not parse",
			setup: func(t *testing.T) []provider.Option {
				t.Setenv(provider.EnvSPIFFEID, "spiffe://mcp-mesh.local/agent/../zed")
				return []provider.Option{provider.WithProvider("spire")}
			},
			wants: []string{provider.EnvSPIFFEID, `"spiffe://mcp-mesh.local/agent/../zed"`, "dot segment"},
		},
		{
			name: "spire with a SPIFFE ID it never sends",
			setup: func(t *testing.T) []provider.Option {
				w := spiffetest.NewServer(t, "")
				w.SetSVID(spiffeid.RequireFromString("spiffe://mcp-mesh.local/agent/zed"))
				t.Setenv(spire.EnvSocket, w.SocketPath())
				provider.SetFirstSVIDTimeout(t, 200*time.Millisecond)
				return []provider.Option{provider.WithProvider("spire"), provider.WithSPIFFEID("spiffe://mcp-mesh.local/agent/opus")}
			},
			is:    spire.ErrNoSVID,
			wants: []string{"spiffe://mcp-mesh.local/agent/opus", "it sent spiffe://mcp-mesh.local/agent/zed"},
		},
		{
			name: "spire with a missing MCP_MESH_TLS_CA",
			setup: func(t *testing.T) []provider.Option {
				t.Setenv(credentials.EnvCA, filepath.Join(t.TempDir(), "none.pem"))
				return []provider.Option{provider.WithProvider("spire")}
			},
			wants: []string{"provider spire", credentials.EnvCA, "none.pem", "no such file"},
		},
		{
			name: "vault with an MCP_MESH_TLS_CA that is not PEM",
			setup: func(t *testing.T) []provider.Option {
				t.Setenv(credentials.EnvCA, pkitest.WriteFile(t, t.TempDir(), "ca.pem", []byte("not PEM")))
				return []provider.Option{provider.WithProvider("vault")}
			},
			wants: []string{"provider vault", credentials.EnvCA, "no CERTIFICATE PEM block"},
		},
		{
			name: "enroll with an MCP_MESH_TLS_CA that is no CA",
			setup: func(t *testing.T) []provider.Option {
				leaf := pkitest.NewRoot(t, "a CA").Leaf(t, "meshd")
				t.Setenv(credentials.EnvCA, pkitest.WriteFile(t, t.TempDir(), "ca.pem", pkitest.CertPEM(leaf)))
				return []provider.Option{provider.WithProvider("enroll"), withNode(t, s)}
			},
			is:    credentials.ErrNotCA,
			wants: []string{"provider enroll", credentials.EnvCA, `"meshd"`},
		},
		{
			name: "a SPIFFE ID for the file provider",
			setup: func(t *testing.T) []provider.Option {
				writeFiles(t, s, "files@ct111")
				return []provider.Option{provider.WithSPIFFEID("spiffe://mcp-mesh.local/agent/opus")}
			},
			wants: []string{"provider file", "spire provider only"},
		},
		{
			name: "enroll without an enrolled node",
			setup: func(t *testing.T) []provider.Option {
				return []provider.Option{provider.WithProvider("enroll"), provider.WithNodeDir(t.TempDir())}
			},
			wants: []string{"holds no enrolled node", "meshctl enroll"},
		},
		{
			name: "enroll for an agent without a certificate",
			setup: func(t *testing.T) []provider.Option {
				return []provider.Option{provider.WithProvider("enroll"), withNode(t, s)}
			},
			agent: "sonnet",
			wants: []string{`"sonnet"`, "meshctl agent-cert sonnet"},
		},
		{
			name: "enroll without a recorded meshd",
			setup: func(t *testing.T) []provider.Option {
				d, _ := enrolled(t, s)
				if err := os.Remove(d.Path(enroll.ServerFile)); err != nil {
					t.Fatal(err)
				}
				return []provider.Option{provider.WithProvider("enroll"), provider.WithNodeDir(string(d))}
			},
			wants: []string{provider.EnvServer, "not written at enrollment"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			opts := tt.setup(t)
			agent := tt.agent
			if agent == "" {
				agent = "opus"
			}
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			src, err := provider.FromEnv(ctx, agent, opts...)
			if err == nil {
				src.Close()
				t.Fatal("FromEnv succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v does not wrap %v", err, tt.is)
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestEnrollRotateAndClose: the enroll provider's source renews on demand
// (meshd's rotate signal) and serves the new certificate, and Close stops
// its renewals. MCP_MESH_TLS_CA's CA is added to its anchors, and takes
// nothing away.
func TestEnrollRotateAndClose(t *testing.T) {
	clearEnv(t)
	s := enrolltest.NewServer(t, enrolltest.Config{})
	operator := pkitest.NewRoot(t, "operator's CA")
	t.Setenv(credentials.EnvCA, pkitest.WriteFile(t, t.TempDir(), "ca.pem", operator.PEM()))
	src, err := provider.FromEnv(t.Context(), "opus", provider.WithProvider("enroll"), withNode(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if c := sourcetest.Current(t, src); len(c.OperatorRoots) != 1 || !c.OperatorRoots[0].Equal(operator.Root) || len(c.Roots) == 0 || !c.Roots[0].Equal(s.Root) {
		t.Fatalf("roots %d, operator's %d: want the mesh root and MCP_MESH_TLS_CA's", len(c.Roots), len(c.OperatorRoots))
	}
	rot, ok := src.(interface{ Rotate(context.Context) error })
	if !ok {
		t.Fatalf("the enroll source %T cannot rotate on demand", src)
	}
	changed := src.Changed()
	before := sourcetest.Current(t, src).Certificate.Leaf
	if err := rot.Rotate(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(wait):
		t.Fatal("Changed did not fire after Rotate")
	}
	after := sourcetest.Current(t, src).Certificate.Leaf
	if after.SerialNumber.Cmp(before.SerialNumber) == 0 || after.Subject.CommonName != before.Subject.CommonName {
		t.Fatalf("after Rotate: %q serial %x, before serial %x", after.Subject.CommonName, after.SerialNumber, before.SerialNumber)
	}
	renews := 0
	for _, r := range s.Requests() {
		if r.Path == "/renew" {
			renews++
		}
	}
	if renews != 1 {
		t.Fatalf("%d POST /renew reached meshd, want 1", renews)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Current(); !errors.Is(err, credentials.ErrClosed) {
		t.Fatalf("Current after Close: %v, want ErrClosed", err)
	}
	if err := rot.Rotate(t.Context()); !errors.Is(err, credentials.ErrClosed) {
		t.Fatalf("Rotate after Close: %v, want ErrClosed", err)
	}
	if err := src.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestFromEnvEndsWithContext: whichever the provider, its source ends
// with FromEnv's context.
func TestFromEnvEndsWithContext(t *testing.T) {
	s := enrolltest.NewServer(t, enrolltest.Config{})
	for _, name := range []string{provider.File, provider.SPIRE, provider.Enroll} {
		t.Run(name, func(t *testing.T) {
			clearEnv(t)
			writeFiles(t, s, "files@ct111")
			w := spiffetest.NewServer(t, "")
			w.SetSVID(spiffeid.RequireFromString("spiffe://mcp-mesh.local/mesh-agent"))
			t.Setenv(spire.EnvSocket, w.SocketPath())
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			src, err := provider.FromEnv(ctx, "opus", provider.WithProvider(name), withNode(t, s))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			changed := src.Changed()
			sourcetest.Current(t, src)
			cancel()
			select {
			case <-changed:
			case <-time.After(wait):
				t.Fatal("the source did not end with its context")
			}
			if _, err := src.Current(); !errors.Is(err, credentials.ErrClosed) {
				t.Fatalf("Current after the context ended: %v, want ErrClosed", err)
			}
		})
	}
}
