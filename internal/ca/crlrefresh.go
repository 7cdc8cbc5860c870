package ca

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// noteCRL records what RebuildCRL wrote.
func (c *CA) noteCRL(this time.Time, revSeq int64) {
	c.crlMu.Lock()
	c.crlThis, c.crlRevSeq = this, revSeq
	c.crlMu.Unlock()
}

// CRLThisUpdate returns the this-update of the newest CRL in crl.pem (as
// this process last wrote or read it), or the zero time if there is none.
func (c *CA) CRLThisUpdate() time.Time {
	c.crlMu.Lock()
	this := c.crlThis
	c.crlMu.Unlock()
	if !this.IsZero() {
		return this
	}
	data, err := c.CRLPEM()
	if err != nil {
		return time.Time{}
	}
	for _, crl := range parseCRLs(data) {
		if crl.ThisUpdate.After(this) {
			this = crl.ThisUpdate
		}
	}
	c.crlMu.Lock()
	if c.crlThis.IsZero() {
		c.crlThis, c.crlRevSeq = this, -1 // what it lists is unknown: check the store
	}
	c.crlMu.Unlock()
	return this
}

// servedCRL is when the CRLs of one version of crl.pem are due: file
// names that version (by inode, size and modification time), due is the
// earliest time a third of one of its CRLs' validity has passed, zero when
// it holds none.
type servedCRL struct {
	file os.FileInfo
	due  time.Time
}

// servedDue returns when the CRLs crl.pem holds now must be re-signed:
// once a third of the validity of the shortest-lived of them has passed,
// whatever validity the process that signed it used (this one, another
// meshd started with another --crl-validity, `meshctl --crl-validity 3s
// ca crl`), so the CRL served is re-signed before its own next-update. It
// returns false when crl.pem cannot be read or holds no CRL with a
// next-update. The file is parsed again only when it changed.
func (c *CA) servedDue() (time.Time, bool) {
	fi, err := os.Stat(c.cfg.CRLPath())
	if err != nil {
		return time.Time{}, false
	}
	c.crlMu.Lock()
	cached := c.crlServed
	c.crlMu.Unlock()
	if cached.file != nil && os.SameFile(cached.file, fi) && cached.file.Size() == fi.Size() && cached.file.ModTime().Equal(fi.ModTime()) {
		return cached.due, !cached.due.IsZero()
	}
	data, err := c.CRLPEM()
	if err != nil {
		return time.Time{}, false
	}
	var due time.Time
	for _, crl := range parseCRLs(data) {
		if crl.NextUpdate.IsZero() {
			continue // never written by this CA; nothing to be due for
		}
		if d := crl.ThisUpdate.Add(crl.NextUpdate.Sub(crl.ThisUpdate) / 3); due.IsZero() || d.Before(due) {
			due = d
		}
	}
	c.crlMu.Lock()
	c.crlServed = servedCRL{file: fi, due: due}
	c.crlMu.Unlock()
	return due, !due.IsZero()
}

// CRLRefresher keeps crl.pem current in a long-running process. A CRL
// that is never re-signed expires at its next-update, and every strict
// CRL checker then refuses the whole mesh; so it is re-signed once a third
// of its validity has passed: a third of CRLValidity after this process
// signed it, or sooner when the CRL crl.pem serves was signed elsewhere
// with a shorter validity (crl.pem is looked at every poll). It is also
// re-signed whenever the store holds a revocation the newest CRL does not
// list (Kick), with a burst of kicks coalesced into one rebuild.
type CRLRefresher struct {
	ca    *CA
	every time.Duration
	now   func() time.Time
	after func(time.Duration) <-chan time.Time
	log   *slog.Logger
	kick  chan struct{}
	// retry is how long to wait after a failed rebuild.
	retry time.Duration
	// poll is how often Run looks at crl.pem for a CRL another process
	// signed (a stat; the file is read only when it changed).
	poll time.Duration
}

// NewCRLRefresher returns a refresher of c's CRL. log may be nil.
func (c *CA) NewCRLRefresher(log *slog.Logger) *CRLRefresher {
	if log == nil {
		log = slog.Default()
	}
	return &CRLRefresher{ca: c, every: c.cfg.CRLValidity / 3, now: c.cfg.Now, after: c.cfg.After, log: log,
		kick: make(chan struct{}, 1), retry: time.Minute, poll: time.Second}
}

// Kick asks for a rebuild if the store holds revocations the CRL lacks.
// It never blocks; kicks that arrive while one is pending are one kick.
func (r *CRLRefresher) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Due returns how long until the CRL must be re-signed (zero or less:
// now): a third of CRLValidity after the newest CRL's this-update, or
// sooner when the CRL crl.pem serves was signed with a shorter validity.
func (r *CRLRefresher) Due() time.Duration {
	this := r.ca.CRLThisUpdate()
	if this.IsZero() {
		return 0
	}
	due := this.Add(r.every)
	if served, ok := r.ca.servedDue(); ok && served.Before(due) {
		due = served
	}
	return due.Sub(r.now())
}

// Refresh re-signs the CRL if it is due or lists fewer revocations than
// the store holds, and reports whether it did.
func (r *CRLRefresher) Refresh(ctx context.Context) (bool, error) {
	if r.Due() > 0 {
		r.ca.crlMu.Lock()
		seen := r.ca.crlRevSeq
		r.ca.crlMu.Unlock()
		newer, err := r.ca.store.Revocations(ctx, max(seen, 0))
		if err != nil {
			return false, err
		}
		if seen >= 0 && len(newer) == 0 {
			return false, nil
		}
		if seen < 0 && !r.unlisted(newer) {
			return false, nil
		}
	}
	if _, err := r.ca.RebuildCRL(ctx); err != nil {
		return false, err
	}
	return true, nil
}

// unlisted reports whether crl.pem lacks one of revs (used when this
// process has not written the CRL itself).
func (r *CRLRefresher) unlisted(revs []store.Revocation) bool {
	data, err := r.ca.CRLPEM()
	if err != nil {
		return true
	}
	listed := map[string]bool{}
	for _, crl := range parseCRLs(data) {
		for _, e := range crl.RevokedCertificateEntries {
			listed[e.SerialNumber.Text(16)] = true
		}
	}
	for _, rv := range revs {
		if !listed[rv.Serial] {
			return true
		}
	}
	var newest int64
	for _, rv := range revs {
		newest = max(newest, rv.Seq)
	}
	r.ca.crlMu.Lock()
	r.ca.crlRevSeq = max(r.ca.crlRevSeq, newest)
	r.ca.crlMu.Unlock()
	return false
}

// Run refreshes the CRL when it is due and when kicked, until ctx ends.
func (r *CRLRefresher) Run(ctx context.Context) {
	for {
		wait := max(r.Due(), 0)
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-r.after(min(wait, r.poll)):
			if wait > r.poll && r.Due() > 0 {
				continue // a poll of crl.pem found nothing due
			}
		}
		if _, err := r.Refresh(ctx); err != nil && ctx.Err() == nil {
			r.log.Error("re-signing the CRL failed; retrying", "err", err, "retry_in", r.retry)
			select {
			case <-ctx.Done():
				return
			case <-r.after(r.retry):
			}
		}
	}
}

// parseCRLs returns the CRLs of a PEM file, skipping what does not parse.
func parseCRLs(data []byte) []*x509.RevocationList {
	var out []*x509.RevocationList
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return out
		}
		if crl, err := x509.ParseRevocationList(block.Bytes); err == nil && block.Type == "X509 CRL" {
			out = append(out, crl)
		}
	}
}
