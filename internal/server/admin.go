package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/console"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// adminHandler serves the admin API. Callers are authenticated by the
// listener: file permissions on the unix socket, an admin identity's
// certificate on the mTLS listener.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { s.healthAnswer(w, r, true) })
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /admin/entities", s.listEntities)
	mux.HandleFunc("POST /admin/entities", s.registerEntity)
	mux.HandleFunc("DELETE /admin/entities/{name}", s.revokeEntity)
	mux.HandleFunc("POST /admin/rotate", s.rotate)
	mux.HandleFunc("POST /admin/revoke", s.revokeCert)
	mux.HandleFunc("POST /admin/reinstate", s.reinstate)
	mux.HandleFunc("POST /admin/tokens", s.createToken)
	mux.HandleFunc("GET "+meshapi.PathAdminSessionKeys, s.listSessionKeys)
	mux.HandleFunc("POST "+meshapi.PathAdminSessionKeys+"/rotate", s.rotateSessionKey)
	mux.HandleFunc("DELETE "+meshapi.PathAdminSessionKeys+"/{kid}", s.dropSessionKey)
	mux.HandleFunc("GET "+meshapi.PathAdminPolicies+"/{name}", s.getPolicy)
	mux.HandleFunc("PUT "+meshapi.PathAdminPolicies+"/{name}", s.putPolicy)
	mux.HandleFunc("POST "+meshapi.PathAdminPolicies+"/{name}/check", s.checkPolicy)
	mux.HandleFunc("GET /admin/agents", func(w http.ResponseWriter, r *http.Request) { s.listAgents(w, r, nil) })
	mux.HandleFunc("DELETE /admin/agents/{agent_id}", s.releaseAgent)
	mux.HandleFunc("GET "+meshapi.PathAdminStatus, s.status)
	s.adminRegistryRoutes(mux)
	// The operator console: on the admin surface only, behind what guards
	// it (the socket's permissions, the meshd-admin policy).
	mux.HandleFunc("POST "+meshapi.PathAdminConsoleLogin, s.consoleLogin)
	mux.Handle(meshapi.PathConsole, s.consoleHandler())
	return mux
}

func (s *Server) listenAdminSocket() error {
	path := s.cfg.AdminSocket
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return fmt.Errorf("admin socket %s is in use: is another meshd running on this data dir?", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	s.adminLn = ln
	s.adminSrv = s.httpServer(s.adminHandler())
	s.adminSrv.ConnContext = socketActor
	s.serve(s.adminSrv, ln)
	return nil
}

// listenAdminTLS serves the admin API over mTLS to the mesh CA's
// certificates that the admin policy (AdminPolicy) allows.
func (s *Server) listenAdminTLS() error {
	if s.localCA == nil || s.certs == nil {
		return errors.New("--admin-listen needs the localca trust backend and a server certificate: admin identities are certificates of the mesh CA")
	}
	ln, err := net.Listen("tcp", s.cfg.AdminListen)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	s.adminTLSLn = ln
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: serverCert(s.certs), ClientAuth: tls.RequireAnyClientCert}
	// The same middleware as any mesh service: admin identities are a
	// policy (AdminPolicy), verified against the mesh CA alone and meshd's
	// revocations.
	auth, err := meshauth.New(meshauth.Config{Chain: trust.NewChain(s.revs, []trust.Backend{s.localCA}, trust.WithClock(s.cfg.Now)),
		Authorizer: s.adminPolicy.Authorize, DecisionLog: s.log, Now: s.cfg.Now})
	if err != nil {
		ln.Close()
		return err
	}
	s.adminTLS = s.httpServer(auth.Handler(certActor(s.adminHandler())))
	s.adminTLS.TLSConfig = cfg
	auth.Serve(s.adminTLS)
	s.serve(s.adminTLS, tls.NewListener(ln, cfg))
	return nil
}

func (s *Server) listEntities(w http.ResponseWriter, r *http.Request) {
	out, err := s.entityList(r.Context())
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, meshapi.EntityList{Entities: out})
}

// entityList lists the entities, registered and of the dynamic trust
// sources, by name: GET /admin/entities and the console's entities page.
func (s *Server) entityList(ctx context.Context) ([]meshapi.EntityInfo, error) {
	ents, err := s.st.Entities(ctx)
	if err != nil {
		return nil, err
	}
	agents := map[string]int{}
	for _, v := range s.reg.List(registry.Filter{}) {
		if v.EntityID != "" && v.Status != registry.StatusEvicted {
			agents[v.EntityID]++
		}
	}
	out := []meshapi.EntityInfo{}
	listed := map[string]bool{}
	for _, e := range ents {
		info := meshapi.EntityInfo{Name: e.Name, Subject: e.Subject, Expires: e.NotAfter.UTC().Format("2006-01-02"), NotAfter: e.NotAfter,
			Fingerprint: e.Fingerprint, Source: "meshd", Status: "active", Agents: agents[e.Name], Namespace: StoredNamespace(e).String()}
		if e.Revoked() {
			at := e.RevokedAt
			info.Status, info.RevokedAt = "revoked", &at
		}
		listed[e.Name] = true
		out = append(out, info)
	}
	for _, b := range s.sources.Dynamic() {
		for _, name := range b.Entities() {
			if listed[name] {
				continue
			}
			certs := b.Certificates(name)
			if len(certs) == 0 {
				continue
			}
			listed[name] = true
			c := certs[0]
			out = append(out, meshapi.EntityInfo{Name: name, Subject: c.Subject.String(), Expires: c.NotAfter.UTC().Format("2006-01-02"), NotAfter: c.NotAfter,
				Fingerprint: trust.Fingerprint(c), Source: b.Name(), Status: "active", Agents: agents[name],
				Namespace: s.sources.Namespace(b.Name(), name).String()})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *Server) registerEntity(w http.ResponseWriter, r *http.Request) {
	var req meshapi.RegisterEntityRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		s.adminError(w, r, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	e, _, err := s.checkEntity(r.Context(), req)
	if err != nil {
		s.adminError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	// One name, one source: a registered entity never shares its name
	// with a trust-dir, Kubernetes or SPIRE entity (TrustSources.Check).
	if h := s.sources.OtherHolder(e.Name); h != "" {
		s.metrics.refusals.WithLabelValues("entity_name_taken").Inc()
		s.adminError(w, r, http.StatusConflict, fmt.Sprintf("%v: trust source %q holds an entity named %q already; choose another name, or remove it from %s first", ErrEntityNameTaken, h, e.Name, h))
		return
	}
	prev, err := s.st.Entity(r.Context(), e.Name)
	replaced := err == nil && !prev.Revoked() && prev.Fingerprint != e.Fingerprint
	a := store.AuditEntry{Time: s.cfg.Now(), Action: "entity.register", Identity: e.Name, Outcome: store.OutcomeOK, Detail: "CA " + e.Subject + " sha256 " + e.Fingerprint}
	if err := s.st.PutEntity(r.Context(), e, req.Force, a); err != nil {
		if errors.Is(err, store.ErrExists) {
			s.adminError(w, r, http.StatusConflict, fmt.Sprintf("entity %q is already registered; use --force to replace its CA", e.Name))
			return
		}
		s.internalError(w, r, err)
		return
	}
	// The registration is durable; it takes effect through the feed, as
	// on every replica (a replaced CA's agents are evicted there).
	if _, err := s.events.Poll(r.Context()); err != nil {
		s.internalError(w, r, err)
		return
	}
	s.log.Info("entity registered", "entity", e.Name, "subject", e.Subject, "fingerprint", e.Fingerprint, "replaced_ca", replaced, "namespace", StoredNamespace(e).String())
	writeJSON(w, http.StatusCreated, meshapi.RegisterEntityResponse{Name: e.Name, Subject: e.Subject, Expires: e.NotAfter.UTC().Format("2006-01-02"),
		Fingerprint: e.Fingerprint, Message: fmt.Sprintf("Entity '%s' registered", e.Name)})
}

// checkEntity validates a registration: a valid id, PEM that holds only CA
// certificates inside their validity period, and a CA no other entity has.
func (s *Server) checkEntity(ctx context.Context, req meshapi.RegisterEntityRequest) (store.Entity, []*x509.Certificate, error) {
	var e store.Entity
	if err := identity.ValidateID(req.Name); err != nil {
		return e, nil, fmt.Errorf("entity name: %w", err)
	}
	certs, err := pemfile.ParseCerts([]byte(req.CACert))
	if err != nil {
		return e, nil, fmt.Errorf("CA certificate: %w", err)
	}
	now := s.cfg.Now()
	for _, c := range certs {
		if !c.BasicConstraintsValid || !c.IsCA {
			return e, nil, fmt.Errorf("%q is not a CA certificate (basicConstraints CA:TRUE is required)", c.Subject.String())
		}
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			return e, nil, fmt.Errorf("CA certificate %q is outside its validity period (%s to %s)", c.Subject.String(), c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	fp := trust.Fingerprint(certs[0])
	others, err := s.st.Entities(ctx)
	if err != nil {
		return e, nil, err
	}
	names := make([]string, 0, len(others))
	for _, o := range others {
		if o.Name != req.Name && !o.Revoked() && o.Fingerprint == fp {
			return e, nil, fmt.Errorf("this CA is already registered as entity %q; one CA, one entity", o.Name)
		}
		names = append(names, o.Name) // revoked ones too: they may come back
	}
	if files := s.sources.TrustDir(); files != nil {
		names = append(names, files.Entities()...)
	}
	ns, err := registry.ParseNamespace(req.Namespace)
	if err != nil {
		return e, nil, err
	}
	if ns.Mode == registry.NamespacePrefix {
		if err := overlappingNamespace(req.Name, names); err != nil {
			return e, nil, err
		}
	}
	pemData := pemfile.EncodeCerts(certs...) // only certificates, never a key pasted along
	return store.Entity{Name: req.Name, CAPEM: pemData, Fingerprint: fp, Subject: certs[0].Subject.String(),
		NotBefore: recordable(certs[0].NotBefore), NotAfter: recordable(certs[0].NotAfter), CreatedAt: now.UTC(), Namespace: storedForm(ns)}, certs, nil
}

// storedForm is how the store records ns: "" for the prefix default.
func storedForm(ns registry.Namespace) string {
	if ns.Mode == registry.NamespacePrefix {
		return ""
	}
	return ns.String()
}

// StoredNamespace returns e's namespace. One the store holds was parsed
// when it was registered; one that no longer parses (written by hand)
// falls back to the prefix, the narrowest.
func StoredNamespace(e store.Entity) registry.Namespace {
	ns, err := registry.ParseNamespace(e.Namespace)
	if err != nil {
		return registry.Namespace{}
	}
	return ns
}

// revokeEntity is DELETE /admin/entities/{name}.
func (s *Server) revokeEntity(w http.ResponseWriter, r *http.Request) {
	out, err := s.revokeEntityNamed(r.Context(), r.PathValue("name"))
	if err != nil {
		s.adminFailed(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// revokeEntityNamed revokes the entity name durably, audited as done by the
// context's actor (store.WithActor), then evicts its agents and closes
// their connections: the one path of the admin API's and the console's
// entity revocations. name is compared, as is, with the names the store
// and the trust dir hold (identity.ValidateID's form, which the entity's
// registration checked).
func (s *Server) revokeEntityNamed(ctx context.Context, name string) (meshapi.RevokeEntityResponse, error) {
	now := s.cfg.Now()
	if e, err := s.st.Entity(ctx, name); err == nil && e.Revoked() {
		return meshapi.RevokeEntityResponse{}, refused(http.StatusConflict, "entity %q was already revoked at %s", name, e.RevokedAt.UTC().Format(time.RFC3339))
	}
	a := store.AuditEntry{Time: now, Action: "entity.revoke", Identity: name, Outcome: store.OutcomeOK, Detail: store.Attributed(ctx, "")}
	err := s.st.RevokeEntity(ctx, name, now.UTC(), a)
	if files := s.sources.TrustDir(); errors.Is(err, store.ErrNotFound) && files != nil && len(files.Certificates(name)) > 0 {
		// An entity another tool dropped into the trust dir: record it so
		// its revocation is durable and listed.
		err = s.adoptFileEntity(ctx, files, name, now)
		if err == nil {
			err = s.st.RevokeEntity(ctx, name, now.UTC(), a)
		}
	}
	if errors.Is(err, store.ErrNotFound) {
		return meshapi.RevokeEntityResponse{}, refused(http.StatusNotFound, "no entity %q (see `meshctl entity list`)", name)
	}
	if err != nil {
		return meshapi.RevokeEntityResponse{}, err
	}
	// The revocation is durable. It takes effect through the feed, like
	// every revocation, which also publishes it to subscribers.
	if _, err := s.events.Poll(ctx); err != nil {
		return meshapi.RevokeEntityResponse{}, err
	}
	eff := s.events.Take("entity.revoked " + name)
	return meshapi.RevokeEntityResponse{Name: name, EvictedAgents: eff.Evicted, ClosedConnections: eff.Closed,
		Message: fmt.Sprintf("Entity '%s' revoked; %d agent(s) evicted", name, eff.Evicted)}, nil
}

// overlappingNamespace refuses an entity name whose namespace overlaps
// another entity's. Entity x owns the agent ids that start with "x-", so
// "acme" and "acme-corp" would both own "acme-corp-weather": one partner
// could claim the other's ids.
func overlappingNamespace(name string, others []string) error {
	for _, o := range others {
		if o == name {
			continue
		}
		if strings.HasPrefix(o+"-", name+"-") || strings.HasPrefix(name+"-", o+"-") {
			long, short := o, name
			if len(name) > len(o) {
				long, short = name, o
			}
			return fmt.Errorf("entity name %q overlaps entity %q: the agent ids of %q (%s-…) would also lie in the namespace of %q (%s-…); choose a name that neither starts with %q nor is the start of another entity's name",
				name, o, long, long, short, short, o+"-")
		}
	}
	return nil
}

// recordable clamps a CA's validity bound to what the store can record
// (1678 to 2262): RFC 5280's "no expiry", 9999-12-31, is stored as 2262.
// The bound is for display; verification reads the certificate itself.
func recordable(t time.Time) time.Time {
	lo, hi := time.Unix(0, math.MinInt64).UTC(), time.Unix(0, math.MaxInt64).UTC()
	switch {
	case t.Before(lo):
		return lo
	case t.After(hi):
		return hi
	}
	return t.UTC()
}

func (s *Server) adoptFileEntity(ctx context.Context, files EntitySource, name string, now time.Time) error {
	certs := files.Certificates(name)
	c := certs[0]
	e := store.Entity{Name: name, CAPEM: pemfile.EncodeCerts(certs...), Fingerprint: trust.Fingerprint(c), Subject: c.Subject.String(),
		NotBefore: recordable(c.NotBefore), NotAfter: recordable(c.NotAfter), CreatedAt: now.UTC()}
	return s.st.PutEntity(ctx, e, true, store.AuditEntry{Time: now, Action: "entity.adopt", Identity: name, Outcome: store.OutcomeOK, Detail: "from trust dir"})
}

// rotate is MCP Mesh's POST /admin/rotate[?entity_id=]: the affected
// agents' next heartbeat asks them to re-register with fresh certificates.
func (s *Server) rotate(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("entity_id")
	ctx := r.Context()
	if name != "" {
		if e, err := s.st.Entity(ctx, name); err == nil && e.Revoked() {
			s.adminError(w, r, http.StatusConflict, fmt.Sprintf("entity %q is revoked; register it again before rotating", name))
			return
		}
		err := s.st.RotateEntity(ctx, name, s.cfg.Now().UTC(), store.AuditEntry{Time: s.cfg.Now(), Action: "entity.rotate", Identity: name, Outcome: store.OutcomeOK})
		if files := s.sources.TrustDir(); errors.Is(err, store.ErrNotFound) && (files == nil || len(files.Certificates(name)) == 0) {
			s.adminError(w, r, http.StatusNotFound, fmt.Sprintf("no entity %q (see `meshctl entity list`)", name))
			return
		}
		if errors.Is(err, store.ErrNotFound) {
			// A trust-dir entity the store does not hold: the event alone.
			err = s.appendRotation(ctx, name)
		}
		if err != nil {
			s.internalError(w, r, err)
			return
		}
	} else if err := s.appendRotation(ctx, ""); err != nil {
		s.internalError(w, r, err)
		return
	}
	if _, err := s.events.Poll(ctx); err != nil {
		s.internalError(w, r, err)
		return
	}
	n := s.events.Take("entity.rotated " + name).Evicted
	msg := "Rotation triggered for all entities"
	if name != "" {
		msg = fmt.Sprintf("Rotation triggered for entity '%s'", name)
	}
	writeJSON(w, http.StatusOK, meshapi.RotateResponse{AffectedAgents: n, EntityID: name, Message: msg})
}

// appendRotation records the rotation of entity ("" for every agent) as
// an event, with its audit entry.
func (s *Server) appendRotation(ctx context.Context, entity string) error {
	who := entity
	if who == "" {
		who = "*"
	}
	_, err := s.st.AppendEvent(ctx, store.Event{Kind: store.EventEntityRotated, Entity: entity, Time: s.cfg.Now().UTC()},
		store.AuditEntry{Time: s.cfg.Now(), Action: "entity.rotate", Identity: who, Outcome: store.OutcomeOK})
	return err
}

// revokeCert is POST /admin/revoke.
func (s *Server) revokeCert(w http.ResponseWriter, r *http.Request) {
	var req meshapi.RevokeRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		s.adminError(w, r, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	out, err := s.revokeTarget(r.Context(), req.Target, req.Reason)
	if err != nil {
		s.adminFailed(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// revokeTarget revokes target (a serial, or an identity's name) for the RFC
// 5280 reason named, audited as done by the context's actor
// (store.WithActor), and returns once this meshd applied it: the one path
// of the admin API's and the console's revocations. The CA resolves
// target (ca.CA.Revoke: a name in identity.Parse's canonical common name,
// a serial as trust.NormalizeSerial's hex), and what it resolved is what
// is revoked and reported.
func (s *Server) revokeTarget(ctx context.Context, target, reasonName string) (meshapi.RevokeResponse, error) {
	if s.auth == nil {
		return meshapi.RevokeResponse{}, refused(http.StatusNotFound, "this meshd has no local CA")
	}
	reason, err := ca.ParseReason(reasonName)
	if err != nil {
		return meshapi.RevokeResponse{}, refused(http.StatusBadRequest, "%v", err)
	}
	revs, err := s.auth.Revoke(ctx, target, reason)
	if err == nil || len(revs) > 0 {
		// Durable: the feed applies it (refused, evicted, disconnected)
		// before the answer.
		if _, perr := s.events.Poll(ctx); perr != nil {
			err = errors.Join(err, perr)
		}
	}
	if err != nil && len(revs) == 0 {
		if errors.Is(err, ca.ErrUnknownCert) || errors.Is(err, ca.ErrAlreadyRevoked) || errors.Is(err, ca.ErrPolicy) {
			return meshapi.RevokeResponse{}, refused(http.StatusBadRequest, "%v", err)
		}
		return meshapi.RevokeResponse{}, exposed(err)
	}
	out := meshapi.RevokeResponse{Revoked: revokedBody(revs)}
	if id, perr := identity.Parse(target); perr == nil {
		out.Identity = id.CommonName()
	}
	eff := s.events.Take("cert.revoked " + out.Identity)
	for _, rv := range revs {
		if rv.CommonName != out.Identity {
			more := s.events.Take("cert.revoked " + rv.CommonName)
			eff.Evicted, eff.Closed = eff.Evicted+more.Evicted, eff.Closed+more.Closed
		}
	}
	out.EvictedAgents, out.ClosedConnections = eff.Evicted, eff.Closed
	if err != nil {
		out.Warning = err.Error()
	}
	return out, nil
}

// releaseAgent frees an agent id whatever certificate claimed it, so that
// its rightful owner can claim it (a node that squatted another node's
// agent name). Audited as agent.release.
func (s *Server) releaseAgent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("agent_id")
	err := s.reg.Release(r.Context(), id, "an operator (admin API)")
	if registry.ReasonOf(err) == "unknown_agent" {
		s.adminError(w, r, http.StatusNotFound, err.Error())
		return
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, meshapi.ReleaseResponse{AgentID: id, Message: fmt.Sprintf("agent id %q released: the next certificate that may speak for it claims it", id)})
}

// reinstate is POST /admin/reinstate.
func (s *Server) reinstate(w http.ResponseWriter, r *http.Request) {
	var req meshapi.ReinstateRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		s.adminError(w, r, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	out, err := s.reinstateIdentity(r.Context(), req.Identity)
	if err != nil {
		s.adminFailed(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// reinstateIdentity lifts the revocation of the identity name, audited as done by
// the context's actor (store.WithActor): certificates can be issued to it
// again (its revoked ones stay revoked). The one path of the admin API's
// and the console's reinstatements; the CA compares name in
// identity.Parse's canonical common name.
func (s *Server) reinstateIdentity(ctx context.Context, name string) (meshapi.ReinstateResponse, error) {
	if s.auth == nil {
		return meshapi.ReinstateResponse{}, refused(http.StatusNotFound, "this meshd has no local CA")
	}
	if err := s.auth.Reinstate(ctx, name); err != nil {
		if errors.Is(err, ca.ErrNotRevoked) || errors.Is(err, ca.ErrUnknownCert) {
			return meshapi.ReinstateResponse{}, refused(http.StatusBadRequest, "%v", err)
		}
		return meshapi.ReinstateResponse{}, exposed(err)
	}
	if _, err := s.events.Poll(ctx); err != nil {
		return meshapi.ReinstateResponse{}, err
	}
	id, _ := identity.Parse(name)
	return meshapi.ReinstateResponse{Identity: id.CommonName(),
		Message: fmt.Sprintf("identity %s reinstated: certificates can be issued to it again; its revoked certificates stay revoked", id.CommonName())}, nil
}

// revokedBody is revs on the wire; nil stays null, as it always was.
func revokedBody(revs []store.Revocation) []meshapi.RevokedCert {
	var out []meshapi.RevokedCert
	for _, r := range revs {
		out = append(out, meshapi.RevokedCert{Seq: r.Seq, Serial: r.Serial, CommonName: r.CommonName, IssuerKeyID: r.IssuerKeyID, Reason: r.Reason, RevokedAt: r.RevokedAt, KeyHash: r.KeyHash})
	}
	return out
}

func (s *Server) adminError(w http.ResponseWriter, r *http.Request, code int, msg string) {
	s.log.Info("admin request refused", "method", r.Method, "path", r.URL.Path, "code", code, "detail", msg)
	writeJSON(w, code, meshapi.ErrorResponse{Error: msg, Timestamp: now(s)})
}

// adminRefusal is an admin operation refused for what the operator asked
// or the state it met: the admin API answers Code with the message, and
// the console shows it (it matches console.ErrInput).
type adminRefusal struct {
	Code int
	msg  string
}

func (e *adminRefusal) Error() string { return e.msg }

// Is makes a refusal a console.ErrInput: the operator's to fix.
func (e *adminRefusal) Is(target error) bool { return target == console.ErrInput }

// refused returns an adminRefusal answered with code.
func refused(code int, format string, args ...any) error {
	return &adminRefusal{Code: code, msg: fmt.Sprintf(format, args...)}
}

// exposedError is a failure of meshd whose message the admin API has
// always shown its caller (the CA's), as a 500.
type exposedError struct{ err error }

func (e *exposedError) Error() string { return e.err.Error() }
func (e *exposedError) Unwrap() error { return e.err }

func exposed(err error) error { return &exposedError{err} }

// adminFailed answers an admin operation's error: a refusal with its code
// and message, the database away with 503, an exposed failure with 500
// and its message, anything else as internalError.
func (s *Server) adminFailed(w http.ResponseWriter, r *http.Request, err error) {
	var (
		ref *adminRefusal
		exp *exposedError
	)
	switch {
	case errors.As(err, &ref):
		s.adminError(w, r, ref.Code, ref.msg)
	case s.unavailable(w, r, err):
	case errors.As(err, &exp):
		s.adminError(w, r, http.StatusInternalServerError, exp.Error())
	default:
		s.internalError(w, r, err)
	}
}

func (s *Server) internalError(w http.ResponseWriter, r *http.Request, err error) {
	if s.unavailable(w, r, err) {
		return
	}
	s.log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeJSON(w, http.StatusInternalServerError, meshapi.ErrorResponse{Error: "internal error; see meshd's log", Timestamp: now(s)})
}

// unavailable answers 503 to a request that failed because the database is
// away (store.ErrUnavailable: restarting, unreachable) and reports whether
// it did. Nothing was acknowledged that the store did not hold; the caller
// may retry once the database is back, which meshd notices by itself.
func (s *Server) unavailable(w http.ResponseWriter, r *http.Request, err error) bool {
	if !errors.Is(err, store.ErrUnavailable) {
		return false
	}
	s.log.Warn("request refused: the database is unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set("Retry-After", "1")
	writeJSON(w, http.StatusServiceUnavailable, meshapi.ErrorResponse{Error: "the database is unavailable; nothing was written; retry shortly", Timestamp: now(s)})
	return true
}
