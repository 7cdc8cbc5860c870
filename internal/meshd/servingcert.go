package meshd

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/retry"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// Bounds of the backoff after a failed re-issue of meshd's own serving
// certificate, and the longest it sleeps between two looks at it.
const (
	servingRetryMin = time.Second
	servingRetryMax = 5 * time.Minute
	servingMaxSleep = time.Hour
)

// servingCert keeps the agent port's certificate on a live intermediate
// when meshd's own CA issued it into its own directory (issued/<node>.crt
// and .key, what `meshd --dev` and `meshctl ca issue-node` write): it
// re-issues it, same key, at the renew_after the CA gives it
// ((*ca.CA).RenewAt), and at once when its issuer is tainted or revoked.
// ca.Sign rewrites the certificate file atomically (the key file is kept),
// and the server's file source serves the new one on new handshakes.
// Replicas each have their own CA directory and so their own files; a
// process that shares the files with another reads them again before each
// re-issue and finds the other's renewal.
//
// Only run touches its fields after construction; wake is the only thing
// other goroutines use.
type servingCert struct {
	auth     *ca.CA
	id       identity.Identity
	certFile string
	log      *slog.Logger
	now      func() time.Time
	// wake is signalled, never blocking, after each reload of the CA:
	// a taint or a revoked intermediate makes the certificate due now.
	wake chan struct{}
	// sign is auth.Sign; retryMin and retryMax bound the backoff after a
	// failure, rand draws its jitter.
	sign               func(context.Context, ca.Request, ...ca.SignOption) (*ca.Issued, error)
	retryMin, retryMax time.Duration
	rand               func(int64) int64
}

// ownServingCert returns the renewal of the agent port's certificate when
// meshd's CA issued it itself: nil, with no error, for anything else
// (TLS off, a SPIRE SVID, no CA, files an operator brought). Who vouches
// for "issued it itself": the certificate's common name must parse as a
// node identity, whose canonical common name (id.CommonName(), as in
// "meshd.mesh") is the leaf's; CertFile and KeyFile must be, as cleaned
// absolute paths, exactly the CA's IssuedCertPath and IssuedKeyPath of
// that name; and the CA's store must record this very certificate (its
// serial, with the same SHA-256 fingerprint). A look-alike file the CA
// did not issue, or one outside its directory, is never rewritten.
func ownServingCert(ctx context.Context, cfg Config, st server.Store, authority *ca.CA) (*servingCert, error) {
	if authority == nil || cfg.TLSMode == server.TLSOff || cfg.CertSource != nil || cfg.SPIRE.ServeSVID || cfg.CertFile == "" {
		return nil, nil
	}
	leaf, err := pemfile.ReadCert(cfg.CertFile)
	if err != nil {
		return nil, nil // the server's own load reports it
	}
	id, err := identity.Parse(leaf.Subject.CommonName)
	if err != nil || id.Kind != identity.KindNode || id.CommonName() != leaf.Subject.CommonName {
		return nil, nil
	}
	c := authority.Config()
	if !samePath(cfg.CertFile, c.IssuedCertPath(id.CommonName())) || !samePath(cfg.KeyFile, c.IssuedKeyPath(id.CommonName())) {
		return nil, nil
	}
	rec, err := st.Cert(ctx, leaf.SerialNumber.Text(16))
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("meshd's serving certificate %s: look it up in the store: %w", cfg.CertFile, err)
	}
	if rec.Fingerprint != trust.Fingerprint(leaf) {
		return nil, nil
	}
	return &servingCert{auth: authority, id: id, certFile: cfg.CertFile, log: cfg.Logger, now: cfg.Now, wake: make(chan struct{}, 1),
		sign: authority.Sign, retryMin: servingRetryMin, retryMax: servingRetryMax, rand: rand.Int64N}, nil
}

// samePath says whether a and b name one path once made absolute and
// cleaned (symbolic links are not followed: the file source watches the
// directory of the path it was given).
func samePath(a, b string) bool {
	a, errA := filepath.Abs(a)
	b, errB := filepath.Abs(b)
	return errA == nil && errB == nil && a == b
}

// poke makes run look at the certificate again now.
func (s *servingCert) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run re-issues the certificate whenever it is due until ctx ends.
func (s *servingCert) run(ctx context.Context) {
	failures := 0
	for {
		wait, err := s.check(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			wait = retry.Backoff(failures, s.retryMin, s.retryMax, s.rand)
			s.log.Error("re-issuing meshd's serving certificate failed; it keeps serving the current one and tries again", "cert", s.certFile, "retry_in", wait, "failures", failures, "err", err)
		} else {
			failures = 0
		}
		t := time.NewTimer(min(wait, servingMaxSleep))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// check re-issues the certificate if it is due and returns how long until
// it is due next.
func (s *servingCert) check(ctx context.Context) (time.Duration, error) {
	// The file, not what was loaded last: a process sharing it may have
	// renewed it already.
	leaf, err := pemfile.ReadCert(s.certFile)
	if err != nil {
		return 0, err
	}
	now := s.now()
	at, why := s.due(leaf)
	if now.Before(at) {
		return at.Sub(now), nil
	}
	old := leaf.SerialNumber.Text(16)
	// The same identity and operator-granted SANs, the same key (the CA
	// keeps it in issued/), and only while the current certificate is not
	// revoked: a revoked serving certificate is an operator's to replace,
	// with a new key.
	req := ca.Request{Profile: ca.ProfileNode, Identity: s.id, ExtraSANs: ca.ExtraSANs(leaf, s.id)}
	is, err := s.sign(ctx, req, ca.WithGeneratedKey(), ca.AuthorizedBy(old), ca.Renews(old))
	if err != nil {
		return 0, fmt.Errorf("re-issue %s (%s): %w", s.id.CommonName(), why, err)
	}
	s.log.Info("re-issued meshd's serving certificate", "cert", s.certFile, "why", why, "old_serial", old, "serial", is.Record.Serial,
		"issuer", is.Record.IssuerKeyID, "not_after", is.Cert.NotAfter)
	next, _ := s.due(is.Cert)
	return max(next.Sub(s.now()), 0), nil
}

// due is when leaf is to be re-issued, and why. Its issuer key id is the
// lowercase hex of its authority key id, the form the CA records and
// RenewAt and TaintedIssuers take. A tainted issuer makes it due at the
// taint, without the jitter RenewAt adds: that spreads a fleet's renewals,
// and this is one certificate, which every agent's next handshake
// verifies.
func (s *servingCert) due(leaf *x509.Certificate) (time.Time, string) {
	issuer := hex.EncodeToString(leaf.AuthorityKeyId)
	if at, tainted := s.auth.TaintedIssuers()[issuer]; tainted {
		return at, "its issuer " + issuer + " is tainted"
	}
	live := false
	for _, in := range s.auth.Intermediates() {
		if hex.EncodeToString(in.SubjectKeyId) == issuer {
			live = true
		}
	}
	if !live {
		return time.Time{}, "its issuer " + issuer + " is revoked or unknown"
	}
	return s.auth.RenewAt(issuer, leaf.SerialNumber.Text(16), leaf.NotBefore, leaf.NotAfter), "renew_after"
}
