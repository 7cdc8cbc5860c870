package bundleendpoint

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/retry"
	"github.com/meshtrust/meshtrust/pemfile"
)

// Node is the mesh node whose identity the https_spiffe profile's
// X.509-SVID carries: meshd's own (the name --dev gives meshd's agent
// port), so the endpoint's SPIFFE ID is spiffe://<mesh trust
// domain>/node/meshd, the ID a consumer is told to authorize
// (spire-server federation create -endpointSpiffeID). Only the mesh CA
// vouches for it: a consumer verifies it against the mesh bundle alone.
// While the endpoint holds a live certificate of it, no node can enroll
// as meshd with the bootstrap secret (that enrollment is exclusive); an
// operator must not issue it to anything but meshd.
const Node = "meshd"

// svidTTL is the lifetime the endpoint asks for (less if the CA's leaf
// lifetime is shorter): short, because a consumer checks no CRL, and
// long enough that a renewal costs the store one certificate a day.
const svidTTL = 24 * time.Hour

// Bounds of the backoff between failed renewals.
const (
	retryMin = time.Second
	retryMax = 5 * time.Minute
)

// svid is the https_spiffe profile's serving certificate: an X.509-SVID
// the mesh CA issues for a key that never leaves this process, renewed at
// two thirds of its life.
type svid struct {
	auth   Authority
	clock  retry.Clock
	log    *slog.Logger
	ttl    time.Duration
	holder credentials.Holder
	// renewAt is when the current SVID is due (Unix nanoseconds); set by
	// renew, which runs in New and then only on run's goroutine.
	renewAt atomic.Int64
	// authorities are the document's latest, and checks tells run to
	// see whether the SVID still verifies against them (see check).
	authorities atomic.Pointer[[]*x509.Certificate]
	checks      chan struct{}
}

func newSVID(auth Authority, clock retry.Clock, log *slog.Logger) *svid {
	return &svid{auth: auth, clock: clock, log: log, ttl: min(svidTTL, auth.Config().LeafTTL), checks: make(chan struct{}, 1)}
}

// spiffeID is the endpoint's SPIFFE ID in trust domain td.
func spiffeID(td spiffeid.TrustDomain) (spiffeid.ID, error) {
	id, err := identity.NewNode(Node)
	if err != nil {
		return spiffeid.ID{}, err
	}
	return id.SPIFFEID(td)
}

// renew has the CA sign a new SVID for a new key and makes it current.
func (v *svid) renew(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("bundle endpoint: generate the SVID's key: %w", err)
	}
	req := ca.NodeRequest(Node)
	req.TTL = v.ttl
	// The key was generated here, so possession is proven; the
	// certificate is recorded and audited as every issuance is.
	is, err := v.auth.Sign(ctx, req, ca.ForPublicKey(key.Public()))
	if err != nil {
		return fmt.Errorf("bundle endpoint: issue its X.509-SVID: %w", err)
	}
	chain := []*x509.Certificate{is.Cert}
	if inter, err := pemfile.ParseCerts(is.ChainPEM); err == nil && len(inter) > 0 {
		chain = append(chain, inter[0]) // the issuing intermediate; consumers hold the root
	}
	cert, err := credentials.NewTLSCertificate(chain, key)
	if err != nil {
		return fmt.Errorf("bundle endpoint: %w", err)
	}
	if err := v.holder.Set(&credentials.Credentials{Certificate: cert}); err != nil {
		return fmt.Errorf("bundle endpoint: %w", err)
	}
	issued := v.clock.Now()
	v.renewAt.Store(issued.Add(is.Cert.NotAfter.Sub(issued) * 2 / 3).UnixNano())
	v.log.Info("issued the bundle endpoint's X.509-SVID", "spiffe_id", is.Cert.URIs[0].String(), "serial", is.Record.Serial, "not_after", is.Cert.NotAfter)
	return nil
}

// run renews the SVID when it is due until ctx ends, retrying a failed
// renewal with backoff.
func (v *svid) run(ctx context.Context) {
	attempt := 0
	for {
		wait := time.Unix(0, v.renewAt.Load()).Sub(v.clock.Now())
		if attempt > 0 {
			wait = retry.Backoff(attempt, retryMin, retryMax, mrand.Int64N)
		}
		select {
		case <-ctx.Done():
			return
		case <-v.checks:
			if !v.stale() {
				continue
			}
		case <-v.clock.After(max(wait, 0)):
		}
		if err := v.renew(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			attempt++
			c, _ := v.holder.Current()
			v.log.Warn("renewing the bundle endpoint's X.509-SVID failed; retrying (consumers refuse the endpoint once it expires)", "err", err, "not_after", c.Certificate.Leaf.NotAfter, "attempt", attempt)
			continue
		}
		attempt = 0
	}
}

// check has run see, without waiting, whether the SVID still verifies
// against auths, the authorities the endpoint now publishes. It never
// blocks: a check already pending covers this one.
func (v *svid) check(auths []*x509.Certificate) {
	v.authorities.Store(&auths)
	select {
	case v.checks <- struct{}{}:
	default:
	}
}

// stale reports whether the SVID is due for renewal before its time
// because a consumer holding the published authorities would refuse it
// (a new root), and a new one would verify (the CA's active intermediate
// is among the authorities). Until then consumers that still hold the
// older bundle keep verifying the SVID they have.
func (v *svid) stale() bool {
	p := v.authorities.Load()
	c, err := v.holder.Current()
	if p == nil || err != nil {
		return false
	}
	auths := *p
	if verifies(c.Certificate, auths, v.clock.Now()) {
		return false
	}
	if active := v.auth.ActiveIntermediate(); !slices.ContainsFunc(auths, active.Equal) {
		v.log.Warn("the bundle endpoint's X.509-SVID does not verify against the published bundle, and the CA's active intermediate is not in it: consumers that fetched the new bundle refuse the endpoint until an intermediate of the new root is activated", "active_intermediate", active.Subject.CommonName)
		return false
	}
	return true
}

// verifies reports whether cert's chain verifies against auths as a
// SPIFFE consumer verifies it: every authority an anchor.
func verifies(cert tls.Certificate, auths []*x509.Certificate, now time.Time) bool {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, a := range auths {
		roots.AddCert(a)
	}
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	_, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}
