package credentials

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/meshtrust/meshtrust/pemfile"
)

// ErrNotCA is what AddRoots's error wraps when a certificate it is given
// is not a CA certificate.
var ErrNotCA = errors.New("credentials: not a CA certificate")

// AddRoots returns a Source that serves src's credentials with roots
// added as their OperatorRoots: the CA certificates an operator adds to
// what verifies peers, whatever the provider (MCP_MESH_TLS_CA, which
// provider.FromEnv reads). The SPIFFE rule stays: a bundle alone vouches
// for the IDs of its trust domain, and roots only for peers that no
// bundle speaks for (see Credentials.OperatorRoots).
//
// It fails, changing nothing, when roots is empty or holds a certificate
// that is not a CA (basic constraints CA:TRUE): an end-entity certificate
// among the anchors would be trusted to be exactly itself, which is never
// what an operator adding a CA bundle means.
//
// The Source is src's: Changed, Close, and Rotate when src has it (an
// agent.Rotator), are src's own.
func AddRoots(src Source, roots []*x509.Certificate) (Source, error) {
	if err := checkCAs(roots); err != nil {
		return nil, err
	}
	s := &rootsSource{Source: src, roots: slices.Clone(roots)}
	if r, ok := src.(rotator); ok {
		return rotatingRootsSource{s, r}, nil
	}
	return s, nil
}

// maxCAFile bounds the size of a CA bundle ReadCAs reads.
const maxCAFile = 4 << 20

// ReadCAs reads the CA certificates of the PEM file at path, for
// AddRoots: the bundle MCP_MESH_TLS_CA names. It fails when the file is
// missing or not a regular file, holds no certificate, or holds one that
// is not a CA (ErrNotCA).
func ReadCAs(path string) ([]*x509.Certificate, error) {
	data, err := pemfile.ReadRegular(path, maxCAFile)
	if err != nil {
		return nil, fmt.Errorf("credentials: CA bundle %s: %w", path, err)
	}
	certs, err := pemfile.ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("credentials: CA bundle %s: %w", path, err)
	}
	if err := checkCAs(certs); err != nil {
		return nil, fmt.Errorf("credentials: CA bundle %s: %w", path, err)
	}
	return certs, nil
}

// checkCAs reports what keeps certs from being added as roots: none, or
// one that is not a CA certificate.
func checkCAs(certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return errors.New("credentials: no CA certificates to add")
	}
	for _, c := range certs {
		if !c.BasicConstraintsValid || !c.IsCA {
			return fmt.Errorf("%w: %s; give the CA that issued the peers' certificates", ErrNotCA, describe(c))
		}
	}
	return nil
}

// rotator is agent.Rotator, which a Source that AddRoots wraps keeps.
type rotator interface {
	Rotate(ctx context.Context) error
}

// rootsSource is AddRoots's Source.
type rootsSource struct {
	Source
	roots []*x509.Certificate

	// mu guards from and to, and is held while src's Current runs, so
	// that src's generations are read in lock order: one reader cannot
	// see an older one after another saw a newer one and make a second
	// value for it. Lock order: mu, then whatever src's Current takes
	// (a Holder takes none).
	mu       sync.Mutex
	from, to *Credentials // src's last credentials, and those served for them
}

// Current returns src's current credentials with the added roots: the
// same value until src's change, as Source requires.
func (s *rootsSource) Current() (*Credentials, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.Source.Current()
	if err != nil {
		return nil, err
	}
	if c != s.from {
		with := *c
		with.OperatorRoots = append(slices.Clone(c.OperatorRoots), s.roots...)
		s.from, s.to = c, &with
	}
	return s.to, nil
}

type rotatingRootsSource struct {
	*rootsSource
	r rotator
}

// Rotate is src's.
func (s rotatingRootsSource) Rotate(ctx context.Context) error { return s.r.Rotate(ctx) }
