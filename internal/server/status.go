package server

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
)

// Bounds of GET /admin/status's judgements.
const (
	// expiringWithin is how close to its end a live certificate counts
	// as expiring soon.
	expiringWithin = 7 * 24 * time.Hour
	// caWarnWithin is how close to its end the root or the active
	// intermediate is worth a warning (an intermediate rotation takes a
	// prepare, a wait for verifiers, and an activate).
	caWarnWithin = 30 * 24 * time.Hour
	// feedStaleAfter is how long the change feed may go unread before
	// status warns: meshd polls it every 100ms by default, so this is a
	// store that does not answer.
	feedStaleAfter = 30 * time.Second
	// maxDueListed bounds Status.Certificates.Due.
	maxDueListed = 20
)

// status serves GET /admin/status: meshd's answer to "is my mesh
// healthy", computed from what it holds now (registry, store, CA files,
// change feed). Only admins reach it (the admin socket's permissions, the
// admin policy on the mTLS listener); the costly parts (every recorded
// certificate, the whole audit log) are reads an admin may ask for, and
// audit verifications run one at a time (auditCheck). Nothing here is on
// the heartbeat path.
func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	arrived := s.audits.started.Load()
	t := s.cfg.Now()
	out := meshapi.Status{Service: "meshd", Version: version, Time: t.UTC(), UptimeSeconds: int64(t.Sub(s.started).Seconds()),
		Health: "healthy", Problems: []meshapi.StatusProblem{}}
	problem := func(component, severity, format string, args ...any) {
		out.Problems = append(out.Problems, meshapi.StatusProblem{Component: component, Severity: severity, Message: fmt.Sprintf(format, args...)})
	}
	if s.degraded != nil {
		if out.Degraded = s.degraded(); len(out.Degraded) > 0 {
			out.Health = "degraded"
			for _, d := range out.Degraded {
				problem(meshapi.ComponentHealth, meshapi.SeverityError, "%s refuses what it would admit (%s) since %s", d.Component, d.Reason, d.Since.UTC().Format(time.RFC3339))
			}
		}
	}
	out.Agents = agentCounts(s.reg.List(registry.Filter{}))
	if s.auth != nil {
		out.CA = caStatus(s.auth, t, problem)
		out.CRL = crlStatus(s.auth, t, problem)
		certs, err := certsDue(ctx, s.auth, t)
		if err != nil {
			s.internalError(w, r, err)
			return
		}
		out.Certificates = certs
		if certs.ExpiringSoon > 0 {
			problem(meshapi.ComponentCertificates, meshapi.SeverityWarning, "%d live certificate(s) end within %d days and were not renewed (see `meshctl ca list`)", certs.ExpiringSoon, certs.ExpiringWithinDays)
		}
		if n := certs.RenewalDue - certs.ExpiringSoon; n > 0 {
			problem(meshapi.ComponentCertificates, meshapi.SeverityWarning, "%d more live certificate(s) are past their renewal point and were not renewed (is their holder running?)", n)
		}
	}
	if last := s.lastVerification(); last != nil {
		out.Audit = *last
	} else {
		out.Audit = s.audits.run(arrived, func() meshapi.StatusAudit { return s.verifyAudit(context.WithoutCancel(ctx)) })
	}
	if !out.Audit.OK {
		problem(meshapi.ComponentAudit, meshapi.SeverityError, "the audit log does not verify: %s (run `meshctl ca audit --verify`)", out.Audit.Error)
	}
	out.Feed = meshapi.StatusFeed{Pending: s.events.Pending()}
	since, _ := s.events.Synced()
	since = since.UTC()
	out.Feed.LastPoll, out.Feed.SinceLastPollSeconds = &since, max(0, t.Sub(since).Seconds())
	if out.Feed.Pending > 0 {
		problem(meshapi.ComponentFeed, meshapi.SeverityWarning, "%d change event(s) failed to apply here and are being retried (see meshd's log)", out.Feed.Pending)
	}
	if age := t.Sub(since); age > feedStaleAfter {
		problem(meshapi.ComponentFeed, meshapi.SeverityError, "the change feed was not read for %s: revocations from other processes are not applied here (is the database reachable?)", age.Round(time.Second))
	}
	writeJSON(w, http.StatusOK, out)
}

// agentCounts counts views by status, and those not evicted by entity and
// by trust source.
func agentCounts(views []registry.View) meshapi.StatusAgents {
	out := meshapi.StatusAgents{Total: len(views), ByStatus: map[string]int{}}
	entities, sources := map[string]int{}, map[string]int{}
	for _, v := range views {
		out.ByStatus[v.Status]++
		if v.Status == registry.StatusEvicted {
			continue
		}
		entities[v.EntityID]++
		sources[v.Source]++
	}
	out.ByEntity, out.BySource = groups(entities), groups(sources)
	return out
}

// groups lists counts by name.
func groups(counts map[string]int) []meshapi.StatusGroup {
	out := []meshapi.StatusGroup{}
	for name, n := range counts {
		out = append(out, meshapi.StatusGroup{Name: name, Agents: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// caStatus describes the root and the intermediates, and warns of one
// that ends soon.
func caStatus(a Authority, t time.Time, problem func(component, severity, format string, args ...any)) *meshapi.StatusCA {
	cert := func(c *x509.Certificate) meshapi.StatusCACert {
		return meshapi.StatusCACert{Subject: c.Subject.String(), NotAfter: c.NotAfter.UTC(), DaysLeft: int(c.NotAfter.Sub(t).Hours() / 24)}
	}
	out := &meshapi.StatusCA{Root: cert(a.Root()), Active: cert(a.ActiveIntermediate())}
	if p := a.PreparedIntermediate(); p != nil {
		c := cert(p)
		out.Prepared = &c
	}
	for _, c := range []struct {
		what, next string
		cert       *x509.Certificate
	}{
		{"the root", "create a new root and move the mesh to it", a.Root()},
		{"the active intermediate", "run `meshctl ca rotate-intermediate`", a.ActiveIntermediate()},
	} {
		left := c.cert.NotAfter.Sub(t)
		switch {
		case left <= 0:
			problem(meshapi.ComponentCA, meshapi.SeverityError, "%s (%s) expired at %s: every certificate under it is refused; %s", c.what, c.cert.Subject, c.cert.NotAfter.UTC().Format(time.RFC3339), c.next)
		case left < caWarnWithin && !(c.cert == a.ActiveIntermediate() && out.Prepared != nil):
			problem(meshapi.ComponentCA, meshapi.SeverityWarning, "%s (%s) ends in %d days; %s", c.what, c.cert.Subject, int(left.Hours()/24), c.next)
		}
	}
	return out
}

// crlStatus describes the newest CRL of the active intermediate in
// crl.pem, and reports one that is missing, expired, or not re-signed for
// half its validity (meshd re-signs at a third).
func crlStatus(a Authority, t time.Time, problem func(component, severity, format string, args ...any)) *meshapi.StatusCRL {
	data, err := a.CRLPEM()
	if err != nil {
		problem(meshapi.ComponentCRL, meshapi.SeverityError, "the CRL cannot be read: %v (run `meshctl ca crl`)", err)
		return nil
	}
	active := a.ActiveIntermediate()
	var newest *x509.RevocationList
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		crl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil || !bytes.Equal(crl.AuthorityKeyId, active.SubjectKeyId) {
			continue
		}
		if newest == nil || crl.ThisUpdate.After(newest.ThisUpdate) {
			newest = crl
		}
	}
	if newest == nil {
		problem(meshapi.ComponentCRL, meshapi.SeverityError, "crl.pem holds no CRL of the active intermediate: verifiers that check revocation refuse its certificates (run `meshctl ca crl`)")
		return nil
	}
	out := &meshapi.StatusCRL{ThisUpdate: newest.ThisUpdate.UTC(), NextUpdate: newest.NextUpdate.UTC(), AgeSeconds: int64(t.Sub(newest.ThisUpdate).Seconds())}
	if newest.Number != nil {
		out.Number = newest.Number.String()
	}
	switch validity := newest.NextUpdate.Sub(newest.ThisUpdate); {
	case !newest.NextUpdate.IsZero() && !t.Before(newest.NextUpdate):
		problem(meshapi.ComponentCRL, meshapi.SeverityError, "the CRL expired at %s: strict verifiers refuse every certificate of the mesh (run `meshctl ca crl`)", out.NextUpdate.Format(time.RFC3339))
	case validity > 0 && t.Sub(newest.ThisUpdate) > validity/2:
		problem(meshapi.ComponentCRL, meshapi.SeverityWarning, "the CRL was signed %s ago, over half its validity (%s): meshd re-signs it at a third (see its log)", t.Sub(newest.ThisUpdate).Round(time.Second), validity)
	}
	return out
}

// certsDue counts the live leaf certificates the store recorded (the
// current one of each identity, ca.Current) and those due: past their
// renewal point by the CA's classification (as ca.DueForRenewal and
// meshd_certificates_due_renewal count them), or ending within
// expiringWithin.
func certsDue(ctx context.Context, a Authority, t time.Time) (*meshapi.StatusCertificates, error) {
	listed, err := a.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list certificates: %w", err)
	}
	current := ca.Current(listed)
	out := &meshapi.StatusCertificates{Live: len(current), ExpiringWithinDays: int(expiringWithin.Hours() / 24)}
	var due []ca.Listed
	for _, l := range current {
		soon := l.NotAfter.Sub(t) < expiringWithin
		if soon {
			out.ExpiringSoon++
		}
		if l.Status == ca.StatusExpiring || soon {
			out.RenewalDue++
			due = append(due, l)
		}
	}
	sort.Slice(due, func(i, j int) bool {
		if !due[i].NotAfter.Equal(due[j].NotAfter) {
			return due[i].NotAfter.Before(due[j].NotAfter)
		}
		return due[i].CommonName < due[j].CommonName
	})
	for _, c := range due[:min(len(due), maxDueListed)] {
		out.Due = append(out.Due, meshapi.StatusDueCert{CommonName: c.CommonName, Serial: c.Serial, NotAfter: c.NotAfter.UTC()})
	}
	return out, nil
}

// lastVerification is meshd's own last verification of the audit log
// (--audit-verify-interval), nil when it has none.
func (s *Server) lastVerification() *meshapi.StatusAudit {
	if s.lastAudit == nil {
		return nil
	}
	return s.lastAudit()
}

// verifyAudit verifies the whole audit log for this request: its hash
// chain and, with a mesh CA, the checkpoints the CA signed.
func (s *Server) verifyAudit(ctx context.Context) meshapi.StatusAudit {
	out := meshapi.StatusAudit{OnRequest: true}
	var err error
	if s.auth != nil {
		var rep ca.AuditReport
		rep, err = ca.VerifyLog(ctx, s.auth.Config(), s.st, "", nil)
		out.Entries, out.Checkpoints = rep.Entries, rep.Checkpoints
	} else {
		var entries []store.AuditEntry
		if entries, err = s.st.AuditLog(ctx); err == nil {
			out.Entries = len(entries)
			err = store.VerifyAuditChain(entries)
		}
	}
	out.VerifiedAt = s.cfg.Now().UTC()
	out.OK = err == nil
	if err != nil {
		out.Error = err.Error()
	}
	return out
}

// auditCheck runs one audit verification at a time, and lets the status
// requests that waited for it share it: a request takes the result of a
// verification that began after the request arrived (so it covers every
// entry the request could know of), else runs its own. A burst of status
// requests costs one or two reads of the log, not one each.
//
// Lock order: mu is a leaf, held for the verification.
type auditCheck struct {
	started atomic.Int64 // verifications begun

	mu      sync.Mutex
	last    meshapi.StatusAudit // guarded by mu
	lastRun int64               // its number in started, guarded by mu
}

// run returns the newest verification that began after started read
// arrived, running verify when there is none.
func (a *auditCheck) run(arrived int64, verify func() meshapi.StatusAudit) meshapi.StatusAudit {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.lastRun > arrived {
		return a.last
	}
	a.lastRun = a.started.Add(1)
	a.last = verify()
	return a.last
}
