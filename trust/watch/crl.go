package watch

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// maxCRL bounds the CRL and bundle answers read.
const maxCRL = 16 << 20

// fetchTimeout bounds one GET /crl or GET /bundle.
const fetchTimeout = 30 * time.Second

// PollCRL fetches meshd's CRLs once, verifies each against the mesh CA,
// and adds the serials of those that verify to the set. It returns how
// many serials were new. A CRL that does not verify is skipped and
// reported in the error; the others are still applied.
func (w *Watcher) PollCRL(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	issuers, berr := w.issuers(ctx)
	data, err := w.get(ctx, meshapi.PathCRL, "application/x-pem-file")
	if err != nil {
		return 0, err
	}
	crls, err := parseCRLs(data)
	if err != nil {
		return 0, fmt.Errorf("GET /crl: %w", err)
	}
	now := w.cfg.Clock.Now()
	added := 0
	var errs []error
	for _, crl := range crls {
		if err := verifyCRL(crl, issuers); err != nil {
			if berr != nil {
				err = fmt.Errorf("%w (and the CA bundle could not be refreshed: %v)", err, berr)
			}
			w.log.Warn("CRL refused", "issuer", crl.Issuer.String(), "err", err)
			errs = append(errs, err)
			continue
		}
		if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate) {
			// Its revocations still stand; it may lack newer ones.
			w.log.Warn("CRL is past its next update", "issuer", crl.Issuer.String(), "next_update", crl.NextUpdate)
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber == nil || e.SerialNumber.Sign() <= 0 {
				continue
			}
			if w.set.AddSerial(trust.Revoked{Serial: e.SerialNumber.Text(16), IssuerKeyID: hex.EncodeToString(crl.AuthorityKeyId), Reason: trust.CRLReasonName(e.ReasonCode), At: e.RevocationTime}) {
				added++
			}
		}
	}
	return added, errors.Join(errs...)
}

// issuers returns the CA certificates a CRL may be signed by: meshd's
// bundle and the configured intermediates, each only if it chains to
// Roots. When the bundle cannot be fetched, the last good one is used and
// the error returned beside it.
func (w *Watcher) issuers(ctx context.Context) ([]*x509.Certificate, error) {
	var fetchErr error
	data, err := w.get(ctx, meshapi.PathBundle, "application/x-pem-file")
	var candidates []*x509.Certificate
	if err == nil {
		candidates, err = pemfile.ParseCerts(data)
	}
	if err != nil {
		fetchErr = fmt.Errorf("GET /bundle: %w", err)
	}
	candidates = append(candidates, w.cfg.Intermediates...)
	var verified []*x509.Certificate
	if len(candidates) > 0 {
		pool := x509.NewCertPool()
		for _, c := range candidates {
			pool.AddCert(c)
		}
		for _, c := range candidates {
			if !c.IsCA {
				continue
			}
			_, err := c.Verify(x509.VerifyOptions{Roots: w.cfg.Roots, Intermediates: pool, CurrentTime: w.cfg.Clock.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			if err == nil {
				verified = append(verified, c)
			}
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if fetchErr == nil {
		w.inter = verified
	} else if len(w.inter) > 0 {
		verified = append(verified, w.inter...)
	}
	return verified, fetchErr
}

// verifyCRL checks crl's signature against the issuer among issuers that
// has its name (and key id, when both carry one).
func verifyCRL(crl *x509.RevocationList, issuers []*x509.Certificate) error {
	var lastErr error
	for _, is := range issuers {
		if !bytes.Equal(is.RawSubject, crl.RawIssuer) {
			continue
		}
		if len(crl.AuthorityKeyId) > 0 && len(is.SubjectKeyId) > 0 && !bytes.Equal(crl.AuthorityKeyId, is.SubjectKeyId) {
			continue
		}
		if err := crl.CheckSignatureFrom(is); err != nil {
			lastErr = err
			continue
		}
		return nil
	}
	if lastErr != nil {
		return fmt.Errorf("CRL of %q does not verify against its issuer: %w", crl.Issuer.String(), lastErr)
	}
	return fmt.Errorf("CRL of %q is signed by no CA of the mesh bundle", crl.Issuer.String())
}

// get fetches path from meshd asking for accept.
func (w *Watcher) get(ctx context.Context, path, accept string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.base+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", accept)
	resp, err := w.tr.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach meshd at %s: %w", w.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, answerError("GET "+path, resp)
	}
	return io.ReadAll(io.LimitReader(resp.Body, maxCRL))
}

// parseCRLs reads every "X509 CRL" PEM block of data, or data as one DER
// CRL when it is not PEM (a meshd that ignored the Accept header).
func parseCRLs(data []byte) ([]*x509.RevocationList, error) {
	var out []*x509.RevocationList
	rest := data
	sawPEM := false
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		sawPEM = true
		if block.Type != "X509 CRL" {
			continue
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse CRL: %w", err)
		}
		out = append(out, crl)
	}
	if !sawPEM {
		crl, err := x509.ParseRevocationList(data)
		if err != nil {
			return nil, fmt.Errorf("neither PEM nor a DER CRL: %w", err)
		}
		out = append(out, crl)
	}
	return out, nil
}
