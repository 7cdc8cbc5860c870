package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

// version is reported by /health.
const version = "0.3.0"

// agentHandler serves the agent port: MCP Mesh's agent routes and nothing
// else. The admin API is never reachable here.
func (s *Server) agentHandler() http.Handler {
	mux := http.NewServeMux()
	// The routes that decide on revocation state are gated (fresh.go): a
	// replica that has not read the store for longer than its staleness
	// bound refuses them with 503, and one that cannot reach it now
	// refuses those that write.
	mux.HandleFunc("POST /heartbeat", s.gated(current, s.verified(agentRoutes, s.postHeartbeat)))
	mux.HandleFunc("HEAD /heartbeat/{agent_id}", s.gated(current, s.identified(agentRoutes, s.headHeartbeat)))
	mux.HandleFunc("GET /agents", s.gated(current, s.identified(agentRoutes, s.listAgents)))
	mux.HandleFunc("DELETE /agents/{agent_id}", s.gated(durable, s.identified(agentRoutes, s.deleteAgent)))
	mux.HandleFunc("GET /health", s.identified(public, s.health))
	mux.HandleFunc("GET /{$}", s.identified(public, s.root))
	// Public PKI routes, in every mode: a node enrolling has no
	// certificate yet, and CRLs and bundles are public by nature.
	mux.HandleFunc("POST /enroll", s.gated(durable, s.enroll))
	mux.HandleFunc("GET /crl", s.serveCRL)
	mux.HandleFunc("GET /bundle", s.serveBundle)
	// The stream names revoked agents and entities: in strict mode only a
	// verified certificate reads it.
	mux.HandleFunc("GET /revocations/watch", s.gated(current, s.identified(public, s.serveWatch)))
	// Issuance needs a certificate in every mode: there is nothing a
	// caller without one could be issued.
	mux.HandleFunc("POST /agent-cert", s.gated(durable, s.identified(certified, s.agentCert)))
	mux.HandleFunc("POST /renew", s.gated(durable, s.identified(certified, s.renew)))
	// A session is bound to a certificate; its keys are public.
	mux.HandleFunc("POST "+meshapi.PathSessionAttach, s.gated(durable, s.verified(certified, s.attachSession)))
	mux.HandleFunc("GET "+meshapi.PathSessionJWKS, s.serveJWKS)
	// Every other method and path is MCP Mesh's plain 404 (GET
	// /agents/{id}, GET /heartbeat/{id}, PUT /heartbeat), never the 405
	// the method-routed patterns above would give: a client of MCP Mesh
	// branches on 404. The admin routes are among them: they are never
	// served on this port.
	mux.HandleFunc("/", notFound)
	return s.guardSecret(mux)
}

// peerHandler is a route behind identified: peer is the caller's
// verified certificate, nil for a caller without one.
type peerHandler func(w http.ResponseWriter, r *http.Request, peer *trust.Peer)

// verifiedHandler is a route behind verified that writes on the caller's
// behalf and so rechecks its trust before answering (stillTrusted): v is
// the caller as meshauth verified it, v.Peer() its certificate.
type verifiedHandler func(w http.ResponseWriter, r *http.Request, v meshauth.Verified)

// access says who may call a route of the agent port in TLS mode auto;
// strict admits only verified certificates everywhere, and off has no
// identities at all.
type access int

const (
	// certified routes need a verified certificate in auto too.
	certified access = iota
	// agentRoutes admit callers without a certificate in auto, as MCP
	// Mesh does: the registry lets them act only for agent ids no
	// certificate claimed, and each such request is counted and its
	// caller logged once.
	agentRoutes
	// public routes (/health, the revocation stream) admit callers
	// without a certificate in auto.
	public
)

// identified verifies the caller before h runs, as verified does, and
// hands h the caller's certificate.
func (s *Server) identified(a access, h peerHandler) http.HandlerFunc {
	return s.verified(a, func(w http.ResponseWriter, r *http.Request, v meshauth.Verified) { h(w, r, v.Peer()) })
}

// verified verifies the caller before h runs. In TLS mode off there is
// no caller (the zero Verified). Otherwise a presented certificate must
// verify (403 with the reason if not); a caller without one has none,
// and may reach only the routes a allows, and only in mode auto.
//
// The caller is handed to h as a value (meshauth.Verify), not in a copy
// of the request's context: no handler of the agent port reads
// meshauth.FromContext, and the copy was three allocations on every
// heartbeat. So meshauth.Recheck(r.Context()) finds no caller here:
// stillTrusted takes the Verified.
func (s *Server) verified(a access, h verifiedHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.TLSMode == TLSOff || legacy(r) {
			h(w, r, meshauth.Verified{})
			return
		}
		v, err := s.agentAuth.Verify(r)
		switch {
		case errors.Is(err, trust.ErrNoCertificate):
			if a != certified && s.cfg.TLSMode == TLSAuto {
				if a == agentRoutes {
					s.anonymous.admit(r)
				}
				h(w, r, meshauth.Verified{})
				return
			}
			msg := "client certificate required"
			if s.cfg.TLSMode == TLSAuto {
				msg = "client certificate required: " + r.URL.Path + " needs one in every TLS mode"
			}
			s.refuse(w, r, http.StatusForbidden, trust.ReasonNoCertificate, msg)
		case err != nil:
			s.refuse(w, r, http.StatusForbidden, meshauth.Reason(err), err.Error())
		default:
			peer := v.Peer()
			// One entity name, one trust source (TrustSources.Check).
			if err := s.sources.Check(peer); err != nil {
				s.refuse(w, r, http.StatusForbidden, "entity_name_taken", err.Error())
				return
			}
			if peer != nil && r.TLS != nil {
				s.sources.Admitted(peer.Fingerprint, r.TLS.PeerCertificates, s.cfg.Now())
			}
			s.renewHint(w, peer)
			h(w, r, v)
		}
	}
}

// stillTrusted re-verifies v's certificate if trust changed since the
// request's verification: a revocation that lands while a request is in
// flight must win over the request's own writes. A caller without a
// certificate (the zero Verified) has nothing to lose.
func (s *Server) stillTrusted(ctx context.Context, v meshauth.Verified) error {
	return s.agentAuth.RecheckVerified(ctx, v)
}

// refuse answers a refused request and counts it.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, reason, msg string) {
	s.metrics.refusals.WithLabelValues(reason).Inc()
	// The path compared is the one the mux routed on: POST /enroll is
	// served at exactly meshapi.PathEnroll (the mux redirects any other
	// spelling), so this counts that route's refusals and no other's.
	if r.URL.Path == meshapi.PathEnroll {
		s.metrics.enrollRefusals.WithLabelValues(reason).Inc()
	}
	s.log.Info("request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "code", code, "reason", reason, "detail", msg)
	writeJSON(w, code, meshapi.ErrorResponse{Error: msg, Reason: reason, Timestamp: now(s)})
}

func now(s *Server) string { return s.cfg.Now().UTC().Format(time.RFC3339Nano) }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) postHeartbeat(w http.ResponseWriter, r *http.Request, v meshauth.Verified) {
	peer := v.Peer()
	limit, certless := int64(registry.MaxBody), peer == nil && s.certlessBody > 0
	if certless {
		limit = min(limit, s.certlessBody)
	}
	buf := s.buffers.get()
	defer s.buffers.put(buf)
	// A body that says its length, within the bound, is read as is:
	// net/http's reader stops at that length, so it cannot exceed the
	// bound. Any other body (chunked, or declaring more) is read through
	// MaxBytesReader, which refuses it at the bound and closes the
	// connection behind the answer.
	src := r.Body
	if r.ContentLength < 0 || r.ContentLength > limit {
		src = http.MaxBytesReader(w, r.Body, limit)
	}
	body, err := readAll(src, buf.b[:0])
	buf.b = body
	if err != nil {
		s.count("post", http.StatusRequestEntityTooLarge)
		if certless {
			s.metrics.unauthRefusals.WithLabelValues("certless_payload").Inc()
			s.refuse(w, r, http.StatusRequestEntityTooLarge, "certless_payload", fmt.Sprintf("heartbeat body is larger than %d bytes, the most meshd reads from a caller without a certificate; present a certificate, or declare less", limit))
			return
		}
		s.refuse(w, r, http.StatusRequestEntityTooLarge, "body_too_large", "heartbeat body is larger than meshd accepts (1 MiB, or MCP_MESH_MAX_REQUEST_BODY_BYTES when lower)")
		return
	}
	// The source is the caller's address as its connection reports it
	// (an IPv4 address, an IPv6 /64): no certificate vouches for it, and
	// it only apportions the certless bounds.
	source := ""
	if certless {
		source = sourceKey(r.RemoteAddr)
	}
	var res registry.Result
	if s.storeAway() {
		// The store does not answer: only a heartbeat that writes nothing
		// (an agent this replica knows, unchanged) is served, rather than
		// a registration left hanging on it.
		var ok bool
		if res, ok = s.reg.HeartbeatUnchanged(peer, body); !ok {
			s.refuseStale(w, r, ReasonStoreUnreachable, "this meshd replica cannot reach the store now, and this heartbeat registers or changes an agent, which must be written; nothing was written; retry shortly or on another replica")
			return
		}
	} else if res, err = s.reg.HeartbeatFrom(r.Context(), peer, source, body); err != nil {
		s.registryError(w, r, "post", err)
		return
	}
	if err := s.stillTrusted(r.Context(), v); err != nil {
		// Revoked while this heartbeat was being recorded: the eviction
		// may have run before the write, so evict again.
		// The eviction closed this request's connection, cancelling its
		// context; the record must be written all the same.
		if _, eerr := s.reg.EvictFingerprints(context.WithoutCancel(r.Context()), map[string]bool{peer.Fingerprint: true}, err.Error()); eerr != nil {
			s.log.Error("evict after a racing revocation", "agent", res.AgentID, "err", eerr)
		}
		s.count("post", http.StatusForbidden)
		s.refuse(w, r, http.StatusForbidden, trust.Reason(err), err.Error())
		return
	}
	msg := "Agent updated via heartbeat"
	if res.Created {
		msg = "Agent registered via heartbeat"
		s.metrics.registrations.Inc()
	}
	if res.Rotate {
		msg += "; re-register with a fresh certificate"
	}
	s.count("post", http.StatusOK)
	// The body was read in full and the registry keeps none of it: its
	// buffer takes the answer.
	buf.b = appendHeartbeatResponse(body[:0], res, msg, s.cfg.Now())
	h := w.Header()
	h["Content-Type"] = jsonContentType
	// net/http says the length of an answer that fits its buffer
	// (autoLength) itself, as it does the bare handler's; a larger one is
	// said here, so that it is not sent chunked.
	if len(buf.b) > autoLength {
		h["Content-Length"] = []string{strconv.Itoa(len(buf.b))}
	}
	w.WriteHeader(http.StatusOK)
	w.Write(buf.b)
}

// autoLength is the largest answer net/http gives a Content-Length by
// itself: one the handler wrote in full into the response's buffer
// (net/http's bufferBeforeChunkingSize) before it returned.
const autoLength = 2048

// buffers are the heartbeat bodies' buffers, each reused for the
// request's answer and then for another request.
type buffers struct{ pool sync.Pool }

// buffer is one; b's length is what it holds.
type buffer struct{ b []byte }

// maxPooledBuffer bounds the buffers kept for reuse: the benchmark's
// heartbeat is 2.5 KB, and a rare body near the 1 MiB bound is not kept.
const maxPooledBuffer = 64 << 10

func (p *buffers) get() *buffer {
	if b, ok := p.pool.Get().(*buffer); ok {
		return b
	}
	return &buffer{b: make([]byte, 0, 4096)}
}

func (p *buffers) put(b *buffer) {
	if cap(b.b) > maxPooledBuffer {
		return
	}
	b.b = b.b[:0]
	p.pool.Put(b)
}

// jsonContentType is the Content-Type header's value of a JSON answer,
// shared: net/http only reads it, and Header.Add would append to a copy
// (its capacity is its length).
var jsonContentType = []string{"application/json"}

// readAll is io.ReadAll into b's spare capacity, grown as needed.
func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// appendHeartbeatResponse appends MCP Mesh's heartbeat answer (plus
// rotate) for res, msg and timestamp to b: {"agent_id", "status",
// "message", "rotate", "dependencies_resolved", "llm_tools", "timestamp"},
// byte for byte what encoding/json writes for meshapi.HeartbeatResponse
// (its test says so), but
// with the resolution's JSON encoded once for every heartbeat that
// carries it (registry.Result.ResolvedJSON) rather than again for each.
func appendHeartbeatResponse(b []byte, res registry.Result, msg string, at time.Time) []byte {
	deps := res.ResolvedJSON
	if deps == nil {
		deps = jsonValue(res.Resolved) // "null" for none
	}
	b = append(b, `{"agent_id":`...)
	b = appendJSONString(b, res.AgentID)
	b = append(b, `,"status":"success","message":`...)
	b = appendJSONString(b, msg)
	b = append(b, `,"rotate":`...)
	b = strconv.AppendBool(b, res.Rotate)
	b = append(b, `,"dependencies_resolved":`...)
	b = append(b, deps...)
	b = append(b, `,"llm_tools":{},"timestamp":"`...)
	// now's format: digits, '-', ':', '.', 'T' and 'Z', none of which
	// JSON escapes.
	b = at.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, "\"}\n"...)
}

// appendJSONString appends s as encoding/json writes a string: as is
// when every byte is printable ASCII that it does not escape (", \, <,
// > and &), else by encoding/json itself.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return append(b, jsonValue(s)...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// jsonValue is json.Marshal of v, for values that always marshal.
func jsonValue(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		return []byte("null")
	}
	return b
}

func (s *Server) count(method string, code int) {
	s.metrics.heartbeat(method, code).Inc()
}

// registryError maps a registry refusal to its status code.
func (s *Server) registryError(w http.ResponseWriter, r *http.Request, method string, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, registry.ErrForbidden):
		code = http.StatusForbidden
	case errors.Is(err, registry.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, registry.ErrDraining):
		code = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "5")
	case errors.Is(err, store.ErrUnavailable):
		// The database is away: 503, never a 410 that makes the agent
		// register again (MCP Mesh 3.7.1 answers HEAD so too).
		code = http.StatusServiceUnavailable
	case errors.Is(err, registry.ErrTooMany):
		code = http.StatusTooManyRequests
		w.Header().Set("Retry-After", "60")
		s.metrics.unauthRefusals.WithLabelValues(registry.ReasonOf(err)).Inc()
	case errors.Is(err, registry.ErrTooLarge):
		code = http.StatusRequestEntityTooLarge
		s.metrics.unauthRefusals.WithLabelValues(registry.ReasonOf(err)).Inc()
	case errors.Is(err, registry.ErrUnknown), errors.Is(err, registry.ErrEvicted):
		code = http.StatusGone
		if method == "delete" {
			code = http.StatusNotFound
		}
	}
	if method != "delete" && method != "" {
		s.count(method, code)
	}
	if code == http.StatusInternalServerError && errors.Is(err, context.Canceled) {
		return // the caller went away; nothing to answer
	}
	if code == http.StatusServiceUnavailable && s.unavailable(w, r, err) {
		return
	}
	if code == http.StatusInternalServerError {
		s.log.Error("registry", "method", r.Method, "path", r.URL.Path, "err", err)
		writeJSON(w, code, meshapi.ErrorResponse{Error: "internal error; see meshd's log", Timestamp: now(s)})
		return
	}
	if r.Method == http.MethodHead {
		s.metrics.refusals.WithLabelValues(registry.ReasonOf(err)).Inc()
		w.Header().Set("X-Reason", registry.ReasonOf(err))
		w.WriteHeader(code)
		return
	}
	s.refuse(w, r, code, registry.ReasonOf(err), err.Error())
}

// headHeartbeat is the cheap liveness path: 200 nothing changed, 202 POST
// again, 410 unknown, unhealthy or evicted; 503 with Retry-After when a
// replica cannot tell (it cannot read the store: Registry.Check), so a
// database blip never makes a fleet register again at once.
func (s *Server) headHeartbeat(w http.ResponseWriter, r *http.Request, peer *trust.Peer) {
	res, err := s.reg.Check(peer, r.PathValue("agent_id"))
	if err != nil {
		s.registryError(w, r, "head", err)
		return
	}
	code := http.StatusOK
	if res.Rotate {
		code = http.StatusAccepted
	}
	s.count("head", code)
	w.WriteHeader(code)
}

func (s *Server) deleteAgent(w http.ResponseWriter, r *http.Request, peer *trust.Peer) {
	if err := s.reg.Delete(r.Context(), peer, r.PathValue("agent_id")); err != nil {
		s.registryError(w, r, "delete", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// agentList is GET /agents' answer; agents is null when empty, as in MCP
// Mesh.
type agentList struct {
	Agents    []registry.View `json:"agents"`
	Count     int             `json:"count"`
	Timestamp string          `json:"timestamp"`
}

// notFound is MCP Mesh's answer to a route it does not serve, and
// meshd's on the admin routes of the agent port, which say where they are.
func notFound(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/admin/") {
		http.Error(w, "404 page not found: meshd serves the admin API on its admin listener only (MCP_MESH_ADMIN_PORT or --admin-listen, with an admin identity's certificate), never on the agent port", http.StatusNotFound)
		return
	}
	http.NotFound(w, r)
}

func (s *Server) listAgents(w http.ResponseWriter, r *http.Request, _ *trust.Peer) {
	q := r.URL.Query()
	// MCP Mesh reads fuzzy as a bool, and refuses any other value.
	if v := q.Get("fuzzy"); v != "" {
		if _, err := strconv.ParseBool(v); err != nil {
			writeJSON(w, http.StatusBadRequest, meshapi.ErrorResponse{Error: fmt.Sprintf("Invalid query parameters: fuzzy=%q is not a bool (true, false, 1, 0)", v), Reason: "bad_query", Timestamp: now(s)})
			return
		}
	}
	f := registry.Filter{Status: q.Get("status"), Entity: q.Get("entity"), Namespace: q.Get("namespace"),
		Capabilities: append(q["capabilities"], q["capability"]...)}
	views := s.reg.List(f)
	out := agentList{Agents: views, Count: len(views), Timestamp: now(s)}
	if len(views) == 0 {
		out.Agents = nil
	}
	writeJSON(w, http.StatusOK, out)
}

// health answers GET /health: "healthy", or "degraded" with what is (a
// trust backend refusing its stale anchors), still 200 because the rest
// of meshd serves, and an agent that is not concerned must not stop.
func (s *Server) health(w http.ResponseWriter, r *http.Request, peer *trust.Peer) {
	s.healthAnswer(w, r, peer != nil)
}

// healthAnswer is GET|HEAD /health. What degrades meshd (which trust
// backend went stale, why) is listed only to a caller whose certificate
// a trust backend verified, or on the admin surface (detail): a caller
// without one (TLS auto or off) learns the status alone.
func (s *Server) healthAnswer(w http.ResponseWriter, r *http.Request, detail bool) {
	up := int64(s.cfg.Now().Sub(s.started).Seconds())
	status, degraded := "healthy", s.staleDegradation()
	if s.degraded != nil {
		degraded = append(degraded, s.degraded()...)
	}
	if len(degraded) > 0 {
		status = "degraded"
	}
	if r.Method == http.MethodHead {
		w.Header().Set("X-Health-Status", status)
		w.Header().Set("X-Service-Version", version)
		w.Header().Set("X-Uptime-Seconds", strconv.FormatInt(up, 10))
		w.WriteHeader(http.StatusOK)
		return
	}
	body := map[string]any{"service": "meshd", "status": status, "version": version, "uptime_seconds": up, "timestamp": now(s)}
	if len(degraded) > 0 && detail {
		body["degraded"] = degraded
	}
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) root(w http.ResponseWriter, _ *http.Request, _ *trust.Peer) {
	writeJSON(w, http.StatusOK, map[string]any{"service": "meshd", "status": "running", "version": version, "endpoints": []string{"/health", "/heartbeat", "/agents"}})
}
