package enroll

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/pemfile"
)

// Dir is a node's credential directory (/etc/meshtrust by default):
//
//	node.key              the node's private key (0600)
//	node.crt              the node's certificate, then its intermediates
//	ca.crt                the chain: issuing intermediate, then the root
//	server                meshd's URL, kept at enrollment for later calls
//	agents/<id>.key, .crt each agent's key (0600) and certificate
//
// The directory and agents/ are created 0700. Every file is replaced
// atomically (temporary file, fsync, rename, fsync of the directory), and
// a key is always written before the certificate that goes with it, so a
// crash leaves either the old pair or a new key beside an old certificate
// (which Load reports) — never a certificate whose key was lost.
type Dir string

// The names of the files in a Dir.
const (
	NodeKeyFile  = "node.key"
	NodeCertFile = "node.crt"
	CAFile       = "ca.crt"
	ServerFile   = "server"
	AgentsDir    = "agents"
)

// Path returns the path of name inside the directory.
func (d Dir) Path(name string) string { return filepath.Join(string(d), name) }

// AgentKeyPath returns the path of agent id's key.
func (d Dir) AgentKeyPath(id string) string { return filepath.Join(string(d), AgentsDir, id+".key") }

// AgentCertPath returns the path of agent id's certificate.
func (d Dir) AgentCertPath(id string) string {
	return filepath.Join(string(d), AgentsDir, id+".crt")
}

// HasNode reports whether the directory holds a node key or certificate.
func (d Dir) HasNode() bool {
	return exists(d.Path(NodeKeyFile)) || exists(d.Path(NodeCertFile))
}

// HasAgent reports whether the directory holds a key or certificate of
// agent id.
func (d Dir) HasAgent(id string) bool {
	return exists(d.AgentKeyPath(id)) || exists(d.AgentCertPath(id))
}

// WriteNode writes the node's key, certificate and chain, in that order,
// creating the directory and agents/ if need be.
func (d Dir) WriteNode(key crypto.Signer, b *Bundle) error {
	if err := pemfile.MkdirPrivate(string(d)); err != nil {
		return err
	}
	if err := pemfile.MkdirPrivate(d.Path(AgentsDir)); err != nil {
		return err
	}
	return writePair(d.Path(NodeKeyFile), d.Path(NodeCertFile), key, b, d.Path(CAFile))
}

// WriteAgent writes agent id's key and certificate, in that order.
func (d Dir) WriteAgent(id string, key crypto.Signer, b *Bundle) error {
	if err := identity.ValidateID(id); err != nil {
		return fmt.Errorf("agent id: %w", err)
	}
	if err := pemfile.MkdirPrivate(string(d)); err != nil {
		return err
	}
	if err := pemfile.MkdirPrivate(d.Path(AgentsDir)); err != nil {
		return err
	}
	return writePair(d.AgentKeyPath(id), d.AgentCertPath(id), key, b, "")
}

func writePair(keyPath, certPath string, key crypto.Signer, b *Bundle, chainPath string) error {
	if !samePublicKey(key.Public(), b.Certificate.PublicKey) {
		return fmt.Errorf("%s: the certificate is not for this key; nothing written", certPath)
	}
	if err := pemfile.WriteKey(keyPath, key); err != nil {
		return err
	}
	if err := pemfile.WriteAtomic(certPath, b.CertificatePEM(), 0o644); err != nil {
		return err
	}
	if chainPath != "" {
		return pemfile.WriteAtomic(chainPath, b.ChainPEM(), 0o644)
	}
	return nil
}

// WriteServer records meshd's URL for later calls.
func (d Dir) WriteServer(url string) error {
	if err := pemfile.MkdirPrivate(string(d)); err != nil {
		return err
	}
	return pemfile.WriteAtomic(d.Path(ServerFile), []byte(url+"\n"), 0o644)
}

// Server returns meshd's URL recorded at enrollment.
func (d Dir) Server() (string, error) {
	data, err := os.ReadFile(d.Path(ServerFile))
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(data))
	if s == "" {
		return "", fmt.Errorf("%s is empty", d.Path(ServerFile))
	}
	return s, nil
}

// Node is an enrolled node's credentials, as Load reads them.
type Node struct {
	// ID is the node id, from the certificate's common name.
	ID string
	// Key is the node's private key.
	Key crypto.Signer
	// Certificate is node.crt with Key, ready for a tls.Config; Leaf is set.
	Certificate tls.Certificate
	// Chain is ca.crt: the issuing intermediate, then the root.
	Chain []*x509.Certificate
	// Agents are the agents of agents/, sorted by id.
	Agents []Agent
}

// Agent is one agent's credentials.
type Agent struct {
	ID          string
	Key         crypto.Signer
	Certificate tls.Certificate
}

// Roots returns the roots of Chain (its self-signed certificates), the
// anchors meshd and the node's peers are verified against. A chain
// without a self-signed certificate is taken whole.
func (n *Node) Roots() *x509.CertPool {
	pool := x509.NewCertPool()
	found := false
	for _, c := range n.Chain {
		if selfSigned(c) {
			pool.AddCert(c)
			found = true
		}
	}
	if !found {
		for _, c := range n.Chain {
			pool.AddCert(c)
		}
	}
	return pool
}

// Load reads the node's credentials. It refuses a key file that other
// users can read (wrapping pemfile.ErrPermissions), a certificate that is
// not the key's, and a certificate that is not a node's.
func (d Dir) Load() (*Node, error) {
	key, cert, err := readPair(d.Path(NodeKeyFile), d.Path(NodeCertFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s holds no enrolled node (%w); run `meshctl enroll --dir %s ...` first", string(d), err, string(d))
	}
	if err != nil {
		return nil, err
	}
	id, err := nodeIdentity(cert)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.Path(NodeCertFile), err)
	}
	data, err := os.ReadFile(d.Path(CAFile))
	if err != nil {
		return nil, err
	}
	chain, err := pemfile.ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.Path(CAFile), err)
	}
	n := &Node{ID: id.Node, Key: key, Certificate: cert, Chain: chain}
	entries, err := os.ReadDir(d.Path(AgentsDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, e := range entries {
		agent, ok := strings.CutSuffix(e.Name(), ".crt")
		if !ok || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		key, cert, err := readPair(d.AgentKeyPath(agent), d.AgentCertPath(agent))
		if err != nil {
			return nil, err
		}
		want := agent + "@" + id.Node
		if cn := cert.Leaf.Subject.CommonName; cn != want {
			return nil, fmt.Errorf("%s is for %q, want %q", d.AgentCertPath(agent), cn, want)
		}
		n.Agents = append(n.Agents, Agent{ID: agent, Key: key, Certificate: cert})
	}
	sort.Slice(n.Agents, func(i, j int) bool { return n.Agents[i].ID < n.Agents[j].ID })
	return n, nil
}

// readPair reads a key file and the certificate file that goes with it.
func readPair(keyPath, certPath string) (crypto.Signer, tls.Certificate, error) {
	key, err := pemfile.ReadKey(keyPath)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	data, err := os.ReadFile(certPath)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	certs, err := pemfile.ParseCerts(data)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("%s: %w", certPath, err)
	}
	if !samePublicKey(key.Public(), certs[0].PublicKey) {
		return nil, tls.Certificate{}, fmt.Errorf("%s is not the certificate of %s (a write was interrupted?); enroll or mint it again with --force", certPath, keyPath)
	}
	return key, tlsCertificate(certs[0], certs[1:], key), nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
