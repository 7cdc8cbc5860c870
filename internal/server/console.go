package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/console"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
)

// consoleBackend is the operator console's view of this meshd
// (console.Backend): the registry, the store, the CA, the trust sources
// and the change fan-out. Its actions run the admin API's own functions
// (revokeTarget, reinstateIdentity, revokeEntityNamed, explain), so the
// console and meshctl cannot drift apart.
type consoleBackend struct{ s *Server }

var _ console.Backend = consoleBackend{}

// registeredEntities is the trust backend of the entities registered
// through the admin API (meshd.BackendEntities).
const registeredEntities = "entities"

func (b consoleBackend) Agents(context.Context) ([]console.Agent, error) {
	views := b.s.reg.List(registry.Filter{})
	out := make([]console.Agent, 0, len(views))
	for _, v := range views {
		out = append(out, console.Agent{ID: v.ID, Owner: v.Owner, Node: v.Node, Entity: v.EntityID, Source: v.Source,
			Status: v.Status, Reason: v.Reason, Unauthenticated: v.Unauthenticated, Endpoint: v.Endpoint,
			LastSeen: v.LastSeen, CertExpires: v.CertificateExpiration})
	}
	return out, nil
}

// live reports whether a listed certificate may still be used: neither
// expired nor revoked.
func live(l ca.Listed) bool {
	return l.Status == ca.StatusValid || l.Status == ca.StatusExpiring || l.Status == ca.StatusNotYetValid
}

func (b consoleBackend) Certificates(ctx context.Context) ([]console.Certificate, error) {
	if b.s.auth == nil {
		return nil, nil
	}
	all, err := b.s.auth.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []console.Certificate
	for _, l := range all {
		if !live(l) {
			continue
		}
		out = append(out, console.Certificate{Serial: l.Serial, CommonName: l.CommonName, Kind: l.Kind, IssuerKeyID: l.IssuerKeyID,
			NotBefore: l.NotBefore, NotAfter: l.NotAfter, RenewAfter: l.RenewAt, Due: l.Status == ca.StatusExpiring})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].NotAfter.Before(out[j].NotAfter) })
	return out, nil
}

func (b consoleBackend) Revocations(ctx context.Context) ([]console.Revocation, []console.IdentityRevocation, error) {
	revs, err := b.s.st.Revocations(ctx, 0)
	if err != nil {
		return nil, nil, err
	}
	ids, err := b.s.st.RevokedIdentities(ctx)
	if err != nil {
		return nil, nil, err
	}
	log, err := b.s.st.AuditLog(ctx)
	if err != nil {
		return nil, nil, err
	}
	// Who: the admin the audit entry of each revocation names
	// (store.Attributed, set from what authenticated the request). A
	// certificate's entry names its serial ("serial <hex> reason …"), an
	// identity's its canonical common name (Identity); the newest entry
	// of each wins, so an identity revoked again names its last revoker.
	bySerial, byIdentity := map[string]string{}, map[string]string{}
	for _, a := range log {
		who := store.AttributedTo(a.Detail)
		if a.Outcome != store.OutcomeOK || who == "" {
			continue
		}
		switch a.Action {
		case "cert.revoke":
			if rest, ok := strings.CutPrefix(a.Detail, "serial "); ok {
				if serial, _, _ := strings.Cut(rest, " "); serial != "" {
					bySerial[serial] = who
				}
			}
		case "identity.revoke":
			byIdentity[a.Identity] = who
		}
	}
	outIDs := make([]console.IdentityRevocation, 0, len(ids))
	for _, r := range ids {
		outIDs = append(outIDs, console.IdentityRevocation{Name: r.Name, Reason: ca.Reason(r.Reason).String(), RevokedAt: r.RevokedAt, By: byIdentity[r.Name]})
	}
	out := make([]console.Revocation, 0, len(revs))
	for i := len(revs) - 1; i >= 0; i-- {
		r := revs[i]
		row := console.Revocation{Seq: r.Seq, Serial: r.Serial, CommonName: r.CommonName, IssuerKeyID: r.IssuerKeyID,
			Reason: ca.Reason(r.Reason).String(), RevokedAt: r.RevokedAt, KeyHash: r.KeyHash, By: bySerial[r.Serial]}
		row.Evicted, _, row.Closed = b.s.changes.Evicted("serial " + r.Serial)
		// A certificate revoked with its identity (or its node's): the
		// identity's revoker, and what revoking it evicted.
		for _, name := range store.BlockingNames(r.CommonName) {
			if row.By == "" {
				row.By = byIdentity[name]
			}
			if len(row.Evicted) == 0 {
				row.Evicted, _, row.Closed = b.s.changes.Evicted("identity " + name)
			}
		}
		out = append(out, row)
	}
	return out, outIDs, nil
}

func (b consoleBackend) Entities(ctx context.Context) ([]meshapi.EntityInfo, error) {
	return b.s.entityList(ctx)
}

func (b consoleBackend) TrustSources(ctx context.Context) ([]console.TrustSource, error) {
	stale := map[string]meshapi.Degradation{}
	if b.s.degraded != nil {
		for _, d := range b.s.degraded() {
			stale[strings.TrimPrefix(d.Component, "trust backend ")] = d
		}
	}
	dynamic := map[string]EntitySource{}
	for _, src := range b.s.sources.Dynamic() {
		dynamic[src.Name()] = src
	}
	var out []console.TrustSource
	for _, be := range b.s.chain.Backends() {
		ts := console.TrustSource{Name: be.Name()}
		switch src, ok := dynamic[be.Name()]; {
		case ok:
			ts.Entities = src.Entities()
		case be.Name() == registeredEntities:
			ents, err := b.s.st.Entities(ctx)
			if err != nil {
				return nil, err
			}
			for _, e := range ents {
				if !e.Revoked() {
					ts.Entities = append(ts.Entities, e.Name)
				}
			}
		default:
			ts.Entities = []string{""} // the mesh's own CA
		}
		if d, ok := stale[be.Name()]; ok {
			ts.Stale = true
			ts.Detail = fmt.Sprintf("%s since %s", d.Reason, d.Since.UTC().Format(time.RFC3339))
		}
		out = append(out, ts)
	}
	return out, nil
}

func (b consoleBackend) Audit(ctx context.Context, limit int) (console.AuditLog, error) {
	var (
		log []store.AuditEntry
		err error
	)
	if b.s.auth != nil {
		read := &readLog{st: b.s.st}
		_, err = ca.VerifyLog(ctx, b.s.auth.Config(), read, "", nil)
		log = read.log
	} else if log, err = b.s.st.AuditLog(ctx); err == nil {
		err = store.VerifyAuditChain(log)
	}
	out := console.AuditLog{Total: len(log), Verified: err == nil, CheckedAt: b.s.cfg.Now().UTC()}
	if err != nil {
		if log == nil {
			return out, err // not read: meshd's failure, not the log's
		}
		out.VerifyError = err.Error()
	}
	for i := len(log) - 1; i >= 0 && len(out.Entries) < limit; i-- {
		a := log[i]
		out.Entries = append(out.Entries, console.AuditEntry{Seq: a.Seq, Time: a.Time, Action: a.Action, Identity: a.Identity,
			Outcome: a.Outcome, Detail: a.Detail, Hash: a.Hash})
	}
	return out, nil
}

// readLog keeps the audit log it read for VerifyLog, so the page shows
// the entries that were verified.
type readLog struct {
	st  Store
	log []store.AuditEntry
}

func (r *readLog) AuditLog(ctx context.Context) ([]store.AuditEntry, error) {
	var err error
	r.log, err = r.st.AuditLog(ctx)
	return r.log, err
}

func (b consoleBackend) Intermediates(ctx context.Context) ([]console.Intermediate, error) {
	if b.s.auth == nil {
		return nil, nil
	}
	ints, err := b.s.auth.IntermediateStatus(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]console.Intermediate, 0, len(ints))
	for _, in := range ints {
		out = append(out, console.Intermediate{KeyID: in.KeyID, Subject: in.Cert.Subject.String(), State: in.State,
			NotBefore: in.Cert.NotBefore, NotAfter: in.Cert.NotAfter, LiveCerts: in.LiveCerts})
	}
	return out, nil
}

func (b consoleBackend) Policies(ctx context.Context) ([]string, error) {
	names, err := b.s.st.PolicyNames(ctx)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(names, AdminPolicy) {
		// In force without being stored: the default admin policy.
		names = append(names, AdminPolicy)
		slices.Sort(names)
	}
	return names, nil
}

func (b consoleBackend) Explain(ctx context.Context, q console.Question) (console.Decision, error) {
	d, err := b.s.explain(ctx, q.Policy, meshapi.PolicyCheckRequest{Identity: q.Identity, Operation: q.Operation, Source: q.Source, Entity: q.Entity})
	if err != nil {
		return console.Decision{}, err
	}
	return console.Decision{Allowed: d.Allowed, Rule: d.Rule}, nil
}

// The actions name actor, the admin identity the console's login was
// minted for (its session's), as the admin API's middleware names its
// caller: the audit entry says "by <actor>".

func (b consoleBackend) Revoke(ctx context.Context, actor, target, reason string) (meshapi.RevokeResponse, error) {
	return b.s.revokeTarget(store.WithActor(ctx, actor), target, reason)
}

func (b consoleBackend) Reinstate(ctx context.Context, actor, name string) error {
	_, err := b.s.reinstateIdentity(store.WithActor(ctx, actor), name)
	return err
}

func (b consoleBackend) RevokeEntity(ctx context.Context, actor, name string) error {
	_, err := b.s.revokeEntityNamed(store.WithActor(ctx, actor), name)
	return err
}

func (b consoleBackend) Watch(ctx context.Context) <-chan console.Event {
	return b.s.changes.Subscribe(ctx)
}

// consoleLogin is POST /admin/console/login: a one-time console login
// for the caller, named as the admin surface's middleware named it
// (store.Actor: the socket peer's uid, the admin certificate's identity).
func (s *Server) consoleLogin(w http.ResponseWriter, r *http.Request) {
	actor := store.Actor(r.Context())
	if actor == "" {
		s.adminError(w, r, http.StatusForbidden, "this admin listener cannot name its caller, so it cannot open a console session")
		return
	}
	login, err := s.console.MintLogin(actor)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	s.log.Info("console login minted", "actor", actor, "expires", login.ExpiresAt)
	writeJSON(w, http.StatusOK, login)
}

// consoleHandler is the console under meshapi.PathConsole on the admin
// surface. A live stream outlasts the listener's read deadline, which
// bounds reading the request only: it is lifted once the request is
// read, as for the revocation stream.
//
// A live stream over the mTLS listener ends once the admin certificate
// that opened it is revoked: meshauth refuses that certificate's next
// request, but a stream is one request that lasts.
func (s *Server) consoleHandler() http.Handler {
	h := s.console.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == meshapi.PathConsole+"events" {
			if err := http.NewResponseController(w).SetReadDeadline(time.Time{}); err != nil {
				s.log.Warn("console: cannot lift the read deadline of a live stream", "err", err)
			}
			if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
				ctx, cancel := context.WithCancel(r.Context())
				defer cancel()
				go s.untilRevoked(ctx, cancel, r.TLS.PeerCertificates[0])
				r = r.WithContext(ctx)
			}
		}
		h.ServeHTTP(w, r)
	})
}

// streamRevocationCheck is how often a live stream over mTLS checks its
// admin certificate against the revocation set: a map lookup or three.
const streamRevocationCheck = time.Second

// untilRevoked calls cancel once leaf is revoked (by serial, identity or
// key: trust.RevocationSet.CheckLeaf, the set meshauth checks every admin
// request against), or returns when ctx ends.
func (s *Server) untilRevoked(ctx context.Context, cancel context.CancelFunc, leaf *x509.Certificate) {
	tick := time.NewTicker(streamRevocationCheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := s.revs.CheckLeaf(leaf); err != nil {
				s.log.Info("console: a live stream ended: its admin certificate was revoked", "err", err)
				cancel()
				return
			}
		}
	}
}
