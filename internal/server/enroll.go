package server

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
)

// tokenPrefix starts every join token, so a token is never mistaken for
// the bootstrap secret.
const tokenPrefix = "mtj_"

// bearer returns the credential of an Authorization: Bearer header.
func bearer(r *http.Request) string {
	v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(v)
}

// isSecret compares cred with the bootstrap secret in constant time.
func (s *Server) isSecret(cred string) bool {
	if s.cfg.BootstrapSecret == "" || cred == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(cred), []byte(s.cfg.BootstrapSecret)) == 1
}

type legacyKey struct{}

// guardSecret refuses the bootstrap secret anywhere but /enroll, with an
// audit entry, except on the agent routes in legacy compat mode, where it
// stands in for a client certificate (counted and logged).
func (s *Server) guardSecret(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/enroll" || !s.isSecret(bearer(r)) {
			next.ServeHTTP(w, r)
			return
		}
		noCert := r.TLS == nil || len(r.TLS.PeerCertificates) == 0
		if s.cfg.LegacySecretCompat && noCert && agentRoute(r.URL.Path) {
			s.metrics.legacyUses.Inc()
			s.log.Warn("legacy shared secret used instead of a certificate", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), legacyKey{}, true)))
			return
		}
		s.audit(r.Context(), "secret.misuse", "", store.OutcomeRefused, fmt.Sprintf("bootstrap secret presented on %s %s from %s", r.Method, r.URL.Path, r.RemoteAddr))
		s.refuse(w, r, http.StatusUnauthorized, "secret_outside_enroll", "the bootstrap secret is accepted on /enroll only; every other call uses the node's certificate")
	})
}

func agentRoute(path string) bool {
	return path == "/heartbeat" || strings.HasPrefix(path, "/heartbeat/") || path == "/agents" || strings.HasPrefix(path, "/agents/")
}

func legacy(r *http.Request) bool {
	v, _ := r.Context().Value(legacyKey{}).(bool)
	return v
}

func (s *Server) audit(ctx context.Context, action, ident, outcome, detail string) {
	if err := s.st.Append(context.WithoutCancel(ctx), store.AuditEntry{Time: s.cfg.Now(), Action: action, Identity: ident, Outcome: outcome, Detail: detail}); err != nil {
		s.log.Error("audit", "action", action, "err", err)
	}
}

// enroll is POST /enroll: a new node proves itself with the bootstrap
// secret or a join token and gets its node certificate.
func (s *Server) enroll(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	fail := func(code int, reason, public, detail string, node string) {
		s.audit(ctx, "node.enroll", node, store.OutcomeRefused, fmt.Sprintf("%s from %s", detail, host))
		s.refuse(w, r, code, reason, public)
	}
	now := s.cfg.Now()
	source := sourceKey(r.RemoteAddr)
	v := s.enrollLimit.allow(source, now)
	scope, limit := "from this address", limitEnrollSource
	if v.ok {
		if v = s.enrollGlobal.allow("*", now); !v.ok {
			scope, limit = "from all addresses together", limitEnrollGlobal
		}
	}
	if !v.ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(v.wait.Seconds()+0.999)))
		// One audit entry per source and minute, counting the refusals it
		// stands for: a flood of refusals must not become a flood of
		// fsync'd rows.
		if v.audit {
			s.audit(ctx, "node.enroll", "", store.OutcomeRefused, fmt.Sprintf("rate limited %s: %s (%d more refused since the last entry)", scope, source, v.suppressed))
		}
		s.metrics.rateLimited.WithLabelValues(limit).Inc()
		s.refuse(w, r, http.StatusTooManyRequests, "rate_limited", "too many enrollment attempts "+scope+"; retry later")
		return
	}
	if s.auth == nil {
		fail(http.StatusNotFound, "no_ca", "this meshd has no local CA to enroll nodes with", "no local CA", "")
		return
	}
	req, id, csr, bad := parseEnrollRequest(r.Body)
	if bad != nil {
		fail(http.StatusBadRequest, bad.reason, bad.msg, bad.detail, bad.cn)
		return
	}
	// Pick the provisioner of the credential, authorise, sign.
	cn := id.CommonName()
	e := &enrollment{node: req.NodeID, id: id, csr: csr, host: host}
	p, err := s.enrollProvisioner(bearer(r))
	var opts []ca.SignOption
	if err == nil {
		opts, err = p.authorize(ctx, e)
	}
	var rf *refusal
	switch {
	case errors.As(err, &rf):
		fail(rf.code, rf.reason, rf.public, rf.detail, cn)
		return
	case err != nil:
		s.internalError(w, r, err)
		return
	}
	is, err := s.auth.Sign(ctx, ca.Request{Profile: ca.ProfileNode, Identity: id}, opts...)
	if errors.Is(err, store.ErrLiveCert) {
		fail(http.StatusConflict, "already_enrolled", fmt.Sprintf("node %s already holds a valid certificate; revoke it first, or enroll with a join token for this node", req.NodeID), "node already enrolled (raced)", cn)
		return
	}
	if err != nil {
		s.signError(w, r, err)
		return
	}
	s.log.Info("node enrolled", "node", req.NodeID, "serial", is.Record.Serial, "method", p.method(), "remote", host)
	writeJSON(w, http.StatusCreated, s.issuedBody(is, true))
}

// An enrollProvisioner is one way a new node proves who it is on /enroll
// (step-ca's provisioner): it authorises an enrollment and returns the
// options to sign the node's CSR with, or a *refusal.
type enrollProvisioner interface {
	// method names the proof in the enrollment's audit entry and log.
	method() string
	authorize(ctx context.Context, e *enrollment) ([]ca.SignOption, error)
}

// enrollment is a checked /enroll request: the node id is valid and the
// CSR's signature verified (parseEnrollRequest).
type enrollment struct {
	node string
	id   identity.Identity
	csr  *x509.CertificateRequest
	host string // the caller's address, for the audit log
}

// signOptions are the options every enrollment signs with, method being
// how the node proved itself: parseEnrollRequest checked the CSR's
// signature, which is the proof of possession, not to be paid for twice;
// the certificate's audit entry is the enrollment's.
func (e *enrollment) signOptions(method string) []ca.SignOption {
	return []ca.SignOption{ca.FromCSR(e.csr), ca.ProvenPossession(), ca.Enrolls(method + " from " + e.host)}
}

// refusal is a request a provisioner refused: the status, reason and
// message the caller gets, and the detail of /enroll's audit entry
// (/agent-cert and /renew audit reason and message).
type refusal struct {
	code                   int
	reason, public, detail string
}

func (e *refusal) Error() string { return e.public }

// enrollProvisioner picks the provisioner of a /enroll credential: the
// bootstrap secret, or a join token.
func (s *Server) enrollProvisioner(cred string) (enrollProvisioner, error) {
	switch {
	case cred == "":
		return nil, &refusal{http.StatusUnauthorized, "no_credential", "enrollment needs Authorization: Bearer <bootstrap secret or join token>", "no credential"}
	case s.isSecret(cred):
		return secretProvisioner{s}, nil
	case strings.HasPrefix(cred, tokenPrefix):
		return tokenProvisioner{s, tokenHash(cred)}, nil
	}
	return nil, &refusal{http.StatusUnauthorized, "bad_credential", "invalid bootstrap credential", "wrong bootstrap secret or malformed token"}
}

// secretProvisioner enrolls a node that holds the bootstrap secret, once:
// its certificate is Exclusive.
type secretProvisioner struct{ s *Server }

func (secretProvisioner) method() string { return "bootstrap secret" }

func (p secretProvisioner) authorize(ctx context.Context, e *enrollment) ([]ca.SignOption, error) {
	// A courtesy answer for the common case; what makes one secret
	// enrollment of a node win, however many requests race on however
	// many replicas, is the store's exclusive record (ca.Exclusive).
	live, err := p.s.liveCert(ctx, e.id.CommonName())
	if err != nil {
		return nil, err
	}
	if live != "" {
		return nil, &refusal{http.StatusConflict, "already_enrolled", fmt.Sprintf("node %s already holds a valid certificate (serial %s); revoke it first, or enroll with a join token for this node", e.node, live), "node already enrolled"}
	}
	return append(e.signOptions(p.method()), ca.Exclusive()), nil
}

// tokenProvisioner enrolls the node a one-time join token names; hash is
// the token's SHA-256, all the store knows of it.
type tokenProvisioner struct {
	s    *Server
	hash string
}

func (tokenProvisioner) method() string { return "join token" }

func (p tokenProvisioner) authorize(ctx context.Context, e *enrollment) ([]ca.SignOption, error) {
	cn, short := e.id.CommonName(), p.hash[:12]
	opts := e.signOptions(p.method())
	// A token is spent by the attempt, so a CSR the CA would refuse is
	// refused, by the dry run of the same signing, before it can burn one.
	// A node whose name (<node>.mesh, the token's node, which only the
	// mesh CA vouches for) is revoked as an identity, or whose CSR's key
	// is blocked, is told so: 403 revoked, as the bootstrap secret's
	// enrollment and every issuance route answer it.
	if err := p.s.auth.Check(ctx, ca.Request{Profile: ca.ProfileNode, Identity: e.id}, opts...); errors.Is(err, ca.ErrRevoked) {
		return nil, &refusal{http.StatusForbidden, "revoked", err.Error(), "node revoked; join token " + short + " not spent"}
	} else if err != nil {
		return nil, &refusal{http.StatusBadRequest, "policy", err.Error(), "CSR refused by policy; join token " + short + " not spent"}
	}
	now := p.s.cfg.Now()
	_, err := p.s.st.UseToken(ctx, p.hash, e.node, now, store.AuditEntry{Time: now, Action: "token.use", Identity: cn, Outcome: store.OutcomeOK, Detail: "token " + short + " from " + e.host})
	switch {
	case errors.Is(err, store.ErrTokenNode):
		return nil, &refusal{http.StatusForbidden, "token_other_node", "this join token enrolls another node", "join token " + short + " is for another node"}
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrTokenUsed), errors.Is(err, store.ErrTokenExpired):
		return nil, &refusal{http.StatusUnauthorized, "bad_credential", "invalid bootstrap credential", "join token " + short + ": " + err.Error()}
	case err != nil:
		return nil, err
	}
	return opts, nil
}

// badEnroll is why a /enroll body was refused: the reason and message the
// caller gets, and the audit detail and identity (when known).
type badEnroll struct{ reason, msg, detail, cn string }

// parseEnrollRequest reads and checks a /enroll body (at most 64 KiB): the
// node id must be valid and the CSR's signature must verify. It is the
// route's parser of outside input, fuzzed.
func parseEnrollRequest(body io.Reader) (meshapi.EnrollRequest, identity.Identity, *x509.CertificateRequest, *badEnroll) {
	var req meshapi.EnrollRequest
	if err := json.NewDecoder(io.LimitReader(body, 64<<10)).Decode(&req); err != nil {
		return req, identity.Identity{}, nil, &badEnroll{"bad_request", "body must be JSON {\"node_id\", \"csr\"}: " + err.Error(), "malformed body", ""}
	}
	id, err := identity.NewNode(req.NodeID)
	if err != nil {
		return req, identity.Identity{}, nil, &badEnroll{"bad_node_id", err.Error(), "invalid node id", ""}
	}
	csr, err := ca.ParseCSR([]byte(req.CSR))
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		return req, id, nil, &badEnroll{"bad_csr", "csr: " + err.Error(), "bad CSR", id.CommonName()}
	}
	return req, id, csr, nil
}

// liveCert returns the serial of an unrevoked, unexpired certificate of
// cn, or "".
func (s *Server) liveCert(ctx context.Context, cn string) (string, error) {
	certs, err := s.st.CertsByName(ctx, cn)
	if err != nil {
		return "", err
	}
	now := s.cfg.Now()
	for _, c := range certs {
		if now.Before(c.NotAfter) {
			if _, revoked := s.revs.Serial(c.IssuerKeyID, c.Serial); !revoked {
				return c.Serial, nil
			}
		}
	}
	return "", nil
}

func (s *Server) signError(w http.ResponseWriter, r *http.Request, err error) {
	if code, reason := signRefusal(err); code != 0 {
		s.refuse(w, r, code, reason, err.Error())
		return
	}
	s.internalError(w, r, err)
}

// signRefusal returns the answer to a refused signing request, or 0 for
// an error that is not a refusal.
func signRefusal(err error) (int, string) {
	var rf *refusal
	switch {
	case errors.As(err, &rf):
		return rf.code, rf.reason
	case errors.Is(err, errAgentScope):
		return http.StatusForbidden, "agent_outside_node"
	case errors.Is(err, ca.ErrRevoked):
		return http.StatusForbidden, "revoked"
	case errors.Is(err, ca.ErrPolicy), errors.Is(err, ca.ErrBadCSR):
		return http.StatusBadRequest, "policy"
	}
	return 0, ""
}

// refuseIssue refuses a request of /agent-cert or /renew and audits it:
// a refused issuance is a security event, whether the CA was reached or
// not. The entries are rationed per caller and reason (one a minute, with
// how many it stands for), so a caller cannot fill the audit log with
// refusals.
func (s *Server) refuseIssue(w http.ResponseWriter, r *http.Request, peer *trust.Peer, action string, code int, reason, msg string) {
	who := ""
	if peer != nil {
		who = peer.Name()
	}
	if v := s.issueAudit.allow(who+" "+reason, s.cfg.Now()); v.ok {
		s.audit(r.Context(), action, who, store.OutcomeRefused, reason+": "+msg)
	}
	s.refuse(w, r, code, reason, msg)
}

// issueError is signError for /agent-cert and /renew: refusals audited.
func (s *Server) issueError(w http.ResponseWriter, r *http.Request, peer *trust.Peer, action string, err error) {
	if code, reason := signRefusal(err); code != 0 {
		s.refuseIssue(w, r, peer, action, code, reason, err.Error())
		return
	}
	s.internalError(w, r, err)
}

// heldLookups is how many agents a request may name for admitAgentCerts to
// look each up before it lists the node's agents: past a few, one list
// costs less.
const heldLookups = 4

// admitAgentCerts refuses a node more agent certificates than its rate
// (AgentCertBurst, then one per AgentCertInterval) or more agent
// identities than MaxAgentsPerNode; renewing an agent it holds is never
// refused by the cap. It answers the refusal itself and reports false.
func (s *Server) admitAgentCerts(w http.ResponseWriter, r *http.Request, peer *trust.Peer, action string, node identity.Identity, agentIDs []string) bool {
	now := s.cfg.Now()
	if !s.issueRate(w, r, peer, action, node.Node, len(agentIDs)) {
		return false
	}
	// Renewing agents the node already holds adds no identity, and is
	// never refused for the cap: a lookup per agent, rather than a list
	// of the node's every agent, says so in the common case.
	if len(agentIDs) <= heldLookups {
		held := true
		for _, id := range agentIDs {
			live, err := s.st.HasLiveCert(r.Context(), id+"@"+node.Node, now)
			if err != nil {
				s.internalError(w, r, err)
				return false
			}
			if !live {
				held = false
				break
			}
		}
		if held {
			return true
		}
	}
	live, err := s.st.LiveAgents(r.Context(), node.Node, now)
	if err != nil {
		s.internalError(w, r, err)
		return false
	}
	have := make(map[string]bool, len(live))
	for _, cn := range live {
		have[cn] = true
	}
	n := len(live)
	for _, id := range agentIDs {
		if cn := id + "@" + node.Node; !have[cn] {
			have[cn] = true
			n++
		}
	}
	if n > s.cfg.MaxAgentsPerNode {
		s.refuseIssue(w, r, peer, action, http.StatusForbidden, "agent_limit",
			fmt.Sprintf("node %s would hold %d agent identities with a live certificate, more than the %d allowed (--max-agents-per-node); revoke the agents it no longer runs", node.Node, n, s.cfg.MaxAgentsPerNode))
		return false
	}
	return true
}

// issueRate takes n certificates from the issuance allowance of key (a
// node id, or the common name of a certificate that is no node's),
// refusing with 429 and Retry-After once it is spent: a valid
// certificate is no licence to fill the store.
func (s *Server) issueRate(w http.ResponseWriter, r *http.Request, peer *trust.Peer, action, key string, n int) bool {
	now := s.cfg.Now()
	for range n {
		if v := s.agentCerts.allow(key, now); !v.ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(v.wait.Seconds()+0.999)))
			s.metrics.rateLimited.WithLabelValues(limitAgentCert).Inc()
			s.refuseIssue(w, r, peer, action, http.StatusTooManyRequests, "agent_cert_rate",
				fmt.Sprintf("%s asks for certificates faster than %d then one per %s; retry later", key, s.cfg.AgentCertBurst, s.cfg.AgentCertInterval))
			return false
		}
	}
	return true
}

// errNoMeshCA refuses issuance on a meshd that has no mesh CA to sign
// with: one that verifies against its trust backends only.
var errNoMeshCA = errors.New("this meshd has no mesh CA, so it issues no certificates: it only verifies callers against its trust backends (create the CA with `meshctl ca init` and `meshctl ca issue-intermediate`, or run meshd --dev)")

// issuer answers the issuance routes' first question: is there a mesh CA
// to sign with, and did it vouch for peer? It answers a refusal itself
// and reports false: 404 no_ca without a mesh CA (as /enroll, /crl and
// /bundle answer), 403 not_mesh_cert for a certificate of another
// source.
//
// A node or agent name (ct111.mesh, opus@ct111) is vouched for by the
// mesh CA alone, and "the mesh CA" is the CA object this meshd signs
// with, not a backend's name: without one, the trust dir's ca.pem (MCP
// Mesh's --tls-auto CA) is a backend also named "localca", and its
// certificates must never reach the signer. So the leaf is verified
// against s.localCA, the backend built from s.auth's own root and
// intermediates, whatever backend of the chain admitted it.
func (s *Server) issuer(w http.ResponseWriter, r *http.Request, peer *trust.Peer, action string) bool {
	if s.auth == nil || s.localCA == nil {
		s.refuseIssue(w, r, peer, action, http.StatusNotFound, "no_ca", errNoMeshCA.Error())
		return false
	}
	if peer == nil || !peer.MeshCA || peer.Backend != s.localCA.Name() {
		s.refuseIssue(w, r, peer, action, http.StatusForbidden, "not_mesh_cert", "only certificates of the mesh CA are renewed or issued for here")
		return false
	}
	if _, err := s.localCA.Verify(r.Context(), []*x509.Certificate{peer.Leaf}, s.cfg.Now()); err != nil {
		s.refuseIssue(w, r, peer, action, http.StatusForbidden, "not_mesh_cert", "the certificate does not verify against the mesh CA: "+err.Error())
		return false
	}
	return true
}

// nodeProvisioner lets a node, over mTLS with a certificate the mesh CA
// vouched for (issuer checked that), obtain certificates for its own
// agents: <agent-id>@<the node> and no other name, each recorded only
// while the node's certificate (serial) is not revoked.
type nodeProvisioner struct {
	node   identity.Identity
	serial string
}

// nodeOf returns the provisioner of a node peer; any other peer is
// refused 403 not_node_cert.
func nodeOf(peer *trust.Peer) (nodeProvisioner, error) {
	if peer.Identity.Kind != identity.KindNode {
		return nodeProvisioner{}, &refusal{code: http.StatusForbidden, reason: "not_node_cert", public: "only a node certificate of the mesh CA may do this"}
	}
	return nodeProvisioner{peer.Identity, peer.Serial}, nil
}

// errAgentScope refuses an agent CSR that names another identity than
// <agent-id>@<the node>: a refusal of what the caller may have (403), not
// of a malformed request.
var errAgentScope = errors.New("a node obtains certificates for its own agents only")

// authorize checks an agent CSR of the node (it may only name
// <agent-id>@<node>, or leave the CN empty) and returns the request and
// options to sign it with.
func (p nodeProvisioner) authorize(req meshapi.AgentCertRequest) (ca.Request, []ca.SignOption, error) {
	id, err := identity.NewAgent(req.AgentID, p.node.Node)
	if err != nil {
		return ca.Request{}, nil, fmt.Errorf("%w: %v", ca.ErrPolicy, err)
	}
	csr, err := ca.ParseCSR([]byte(req.CSR))
	if err != nil {
		return ca.Request{}, nil, err
	}
	if cn := csr.Subject.CommonName; cn != "" && cn != id.CommonName() {
		return ca.Request{}, nil, fmt.Errorf("%w: the request names %q; node %s may obtain %q (or leave the CN empty)", errAgentScope, cn, p.node.Node, id.CommonName())
	}
	return ca.Request{Profile: ca.ProfileAgent, Identity: id}, []ca.SignOption{ca.FromCSR(csr), ca.AuthorizedBy(p.serial)}, nil
}

// agentCert is POST /agent-cert: a node mints a certificate for one of its
// own agents.
func (s *Server) agentCert(w http.ResponseWriter, r *http.Request, peer *trust.Peer) {
	const action = "cert.agent"
	if !s.issuer(w, r, peer, action) {
		return
	}
	p, err := nodeOf(peer)
	if err != nil {
		s.issueError(w, r, peer, action, err)
		return
	}
	var req meshapi.AgentCertRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		s.refuseIssue(w, r, peer, action, http.StatusBadRequest, "bad_request", "body must be JSON {\"agent_id\", \"csr\"}: "+err.Error())
		return
	}
	areq, opts, err := p.authorize(req)
	if err != nil {
		s.issueError(w, r, peer, action, err)
		return
	}
	if !s.admitAgentCerts(w, r, peer, action, p.node, []string{req.AgentID}) {
		return
	}
	is, err := s.auth.Sign(r.Context(), areq, opts...)
	if err != nil {
		s.issueError(w, r, peer, action, err)
		return
	}
	writeJSON(w, http.StatusCreated, s.issuedBody(is, true))
}

// renewalProvisioner renews the certificate that authenticated the
// caller's TLS connection (the mesh CA vouched for it, issuer checked
// that): the same identity, profile and operator-granted SANs, for the
// same key or a new one, recorded only while that certificate (its
// serial) is not revoked.
type renewalProvisioner struct{ peer *trust.Peer }

// authorize returns the request and options of the renewal a body asks
// for; withAgents says the node's agents are re-issued with it, so the
// renewal is audited on its own afterwards rather than by its
// certificate's entry.
func (p renewalProvisioner) authorize(req meshapi.RenewRequest, withAgents bool) (ca.Request, []ca.SignOption, error) {
	peer := p.peer
	profile := map[identity.Kind]ca.Profile{identity.KindNode: ca.ProfileNode, identity.KindAgent: ca.ProfileAgent, identity.KindExternal: ca.ProfileClient}[peer.Identity.Kind]
	own := ca.Request{Profile: profile, Identity: peer.Identity, ExtraSANs: ca.ExtraSANs(peer.Leaf, peer.Identity)}
	opts := []ca.SignOption{ca.AuthorizedBy(peer.Serial)}
	if !withAgents {
		// The certificate's own audit entry is the renewal's.
		opts = append(opts, ca.Renews(peer.Serial))
	}
	if req.CSR == "" {
		// No CSR: re-issue for the key the handshake proved.
		return own, append(opts, ca.ForPublicKey(peer.Leaf.PublicKey)), nil
	}
	csr, err := ca.ParseCSR([]byte(req.CSR))
	if err != nil {
		return ca.Request{}, nil, err
	}
	if cn := csr.Subject.CommonName; cn != "" && cn != peer.Identity.CommonName() {
		return ca.Request{}, nil, &refusal{code: http.StatusForbidden, reason: "identity_change", public: fmt.Sprintf("renewal cannot change identity: the certificate is %q, the request names %q", peer.Identity.CommonName(), cn)}
	}
	opts = append(opts, ca.FromCSR(csr))
	if bytes.Equal(csr.RawSubjectPublicKeyInfo, peer.Leaf.RawSubjectPublicKeyInfo) {
		// A CSR for the key the handshake proved needs no second proof
		// of possession.
		opts = append(opts, ca.ProvenPossession())
	}
	return own, opts, nil
}

// renew is POST /renew: the holder of a valid mesh certificate gets a new
// one for the same identity; a node's agents are re-issued with it.
func (s *Server) renew(w http.ResponseWriter, r *http.Request, peer *trust.Peer) {
	const action = "cert.renew"
	if !s.issuer(w, r, peer, action) {
		return
	}
	var req meshapi.RenewRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		s.refuseIssue(w, r, peer, action, http.StatusBadRequest, "bad_request", "body must be JSON {\"csr\", \"agents\"} (csr may be left out to keep the key): "+err.Error())
		return
	}
	if len(req.Agents) > 0 && peer.Identity.Kind != identity.KindNode {
		s.refuseIssue(w, r, peer, action, http.StatusForbidden, "not_node_cert", "only a node renews agent certificates along with its own")
		return
	}
	// Limits first, before any CSR is parsed or checked: a request's cost
	// is bounded by what its node is allowed.
	if len(req.Agents) > s.cfg.MaxAgentsPerNode {
		s.refuseIssue(w, r, peer, action, http.StatusBadRequest, "too_many_agents", fmt.Sprintf("a renewal names %d agents; a node holds at most %d", len(req.Agents), s.cfg.MaxAgentsPerNode))
		return
	}
	// The renewed certificate counts against its node's allowance, as its
	// agents' do.
	rateKey := peer.Identity.Node
	if rateKey == "" {
		rateKey = peer.Identity.CommonName()
	}
	if !s.issueRate(w, r, peer, action, rateKey, 1) {
		return
	}
	if len(req.Agents) > 0 {
		ids := make([]string, len(req.Agents))
		for i, a := range req.Agents {
			ids[i] = a.AgentID
		}
		if !s.admitAgentCerts(w, r, peer, action, peer.Identity, ids) {
			return
		}
	}
	ctx := r.Context()
	own, ownOpts, err := renewalProvisioner{peer}.authorize(req, len(req.Agents) > 0)
	if err != nil {
		s.issueError(w, r, peer, action, err)
		return
	}
	// The agents' requests are checked (the dry run of their signing)
	// before anything is signed, so a renewal refused for one agent
	// records no certificate nobody receives.
	type agentReq struct {
		id   string
		req  ca.Request
		opts []ca.SignOption
	}
	agents := make([]agentReq, 0, len(req.Agents))
	node := nodeProvisioner{peer.Identity, peer.Serial}
	for _, a := range req.Agents {
		areq, aopts, err := node.authorize(a)
		if err == nil {
			err = s.auth.Check(ctx, areq, aopts...)
		}
		if err != nil {
			s.issueError(w, r, peer, action, fmt.Errorf("agent %q: %w", a.AgentID, err))
			return
		}
		// Check verified the agent CSR's signature.
		agents = append(agents, agentReq{a.AgentID, areq, append(aopts, ca.ProvenPossession())})
	}
	is, err := s.auth.Sign(ctx, own, ownOpts...)
	if err != nil {
		s.issueError(w, r, peer, action, err)
		return
	}
	out := meshapi.RenewResponse{IssuedCert: s.issuedBody(is, true), Agents: []meshapi.IssuedCert{}}
	for _, a := range agents {
		ais, err := s.auth.Sign(ctx, a.req, a.opts...)
		if err != nil {
			// Only a revocation racing this renewal (or the store failing)
			// gets here: the node's new certificate is then revoked with
			// its identity, or the holder retries.
			s.issueError(w, r, peer, action, fmt.Errorf("agent %q: %w", a.id, err))
			return
		}
		b := s.issuedBody(ais, false)
		b.AgentID = a.id
		out.Agents = append(out.Agents, b)
	}
	if len(req.Agents) > 0 {
		s.audit(ctx, "cert.renew", peer.Identity.CommonName(), store.OutcomeOK, fmt.Sprintf("serial %s -> %s, %d agent certificate(s)", peer.Serial, is.Record.Serial, len(out.Agents)))
	}
	writeJSON(w, http.StatusOK, out)
}

// serveCRL is GET /crl: the active intermediate's CRL in DER, or every
// live intermediate's CRL in PEM on Accept: application/x-pem-file.
func (s *Server) serveCRL(w http.ResponseWriter, r *http.Request) {
	if s.auth == nil {
		writeJSON(w, http.StatusNotFound, meshapi.ErrorResponse{Error: "this meshd has no local CA", Timestamp: now(s)})
		return
	}
	data, err := s.auth.CRLPEM()
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	if strings.Contains(r.Header.Get("Accept"), "application/x-pem-file") {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(data)
		return
	}
	active := s.auth.ActiveIntermediate()
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err == nil && bytes.Equal(crl.AuthorityKeyId, active.SubjectKeyId) {
			w.Header().Set("Content-Type", "application/pkix-crl")
			w.Write(block.Bytes)
			return
		}
	}
	s.internalError(w, r, errors.New("crl.pem holds no CRL of the active intermediate; run `meshctl ca crl`"))
}

// serveBundle is GET /bundle: the root and every live intermediate.
func (s *Server) serveBundle(w http.ResponseWriter, r *http.Request) {
	if s.auth == nil {
		writeJSON(w, http.StatusNotFound, meshapi.ErrorResponse{Error: "this meshd has no local CA", Timestamp: now(s)})
		return
	}
	data, err := s.auth.BundlePEM()
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Write(data)
}
