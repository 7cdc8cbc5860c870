package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

// openSessions opens the session signing keys: in cfg.SessionKeysDir, by
// default the CA dir's session-keys/ (where meshd keeps its keys). Without
// either there are no sessions, and /session/attach says so.
func (s *Server) openSessions() error {
	dir := s.cfg.SessionKeysDir
	if dir == "" && s.auth != nil {
		dir = filepath.Join(s.auth.Config().Dir, "session-keys")
	}
	if dir == "" {
		return nil
	}
	sess, err := meshauth.OpenSessions(meshauth.SessionsConfig{Dir: dir, TTL: s.cfg.SessionTTL,
		Issuer: s.cfg.SessionIssuer, Audience: s.cfg.SessionAudience, Now: s.cfg.Now})
	if err != nil {
		return err
	}
	s.sessions = sess
	return nil
}

// attachSession is POST /session/attach, the seed's session.attach: the
// certificate must be one the registry would let speak for the agent id
// claimed (registry.Authorize, the heartbeat's decision); the token is
// bound to the certificate.
func (s *Server) attachSession(w http.ResponseWriter, r *http.Request, v meshauth.Verified) {
	peer := v.Peer()
	if s.sessions == nil {
		s.refuse(w, r, http.StatusNotFound, "no_sessions", "this meshd has no session signing keys (no local CA and no --session-keys-dir)")
		return
	}
	if peer == nil {
		s.refuse(w, r, http.StatusForbidden, trust.ReasonNoCertificate, "a session is bound to a client certificate: attach over mTLS with the agent's certificate")
		return
	}
	var req meshapi.SessionAttachRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil || req.AgentID == "" {
		s.refuse(w, r, http.StatusBadRequest, "bad_request", `body must be JSON {"agent_id": "<the agent id your certificate names>"}`)
		return
	}
	// The agent id is vouched for exactly as a heartbeat's is, by the one
	// registry decision: the binding of the trust source that admitted
	// the certificate (peer.Backend; the mesh CA's by exact CN), the
	// namespace of its entity (peer.Entity), and the owner, entity and
	// source of a record that already holds the id (first claim). The
	// canonical string compared is the agent id as the registry keys it.
	if err := s.reg.Authorize(peer, req.AgentID); err != nil {
		s.registryError(w, r, "", err)
		return
	}
	caller := meshauth.CallerFromPeer(peer)
	tok, sess, err := s.sessions.Mint(caller)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	if err := s.stillTrusted(r.Context(), v); err != nil {
		s.refuse(w, r, http.StatusForbidden, trust.Reason(err), err.Error())
		return
	}
	s.log.Info("session attached", "identity", caller.Name, "session", sess.ID, "expires", sess.Expires)
	writeJSON(w, http.StatusOK, meshapi.SessionAttachResponse{Token: tok, TokenType: "Bearer", SessionID: sess.ID,
		AgentID: req.AgentID, Identity: caller.Name, ExpiresAt: sess.Expires.UTC()})
}

// serveJWKS is GET /session/jwks: the keys that verify session tokens,
// for services that verify them without calling meshd.
func (s *Server) serveJWKS(w http.ResponseWriter, r *http.Request) {
	if s.sessions == nil {
		s.refuse(w, r, http.StatusNotFound, "no_sessions", "this meshd has no session signing keys")
		return
	}
	w.Header().Set("Cache-Control", "max-age=60")
	writeJSON(w, http.StatusOK, s.sessions.JWKS())
}

// errNoSessions answers the session key routes of a meshd without keys.
const errNoSessions = "this meshd has no session signing keys (no local CA and no --session-keys-dir)"

// listSessionKeys is GET /admin/session-keys.
func (s *Server) listSessionKeys(w http.ResponseWriter, r *http.Request) {
	if s.sessions == nil {
		s.adminError(w, r, http.StatusNotFound, errNoSessions)
		return
	}
	writeJSON(w, http.StatusOK, s.sessionKeys())
}

func (s *Server) sessionKeys() meshapi.SessionKeysResponse {
	var out meshapi.SessionKeysResponse
	for _, k := range s.sessions.Keys() {
		out.Keys = append(out.Keys, meshapi.SessionKey{KeyID: k.ID, Current: k.Current, Until: k.Until.UTC()})
	}
	return out
}

// rotateSessionKey is POST /admin/session-keys/rotate.
func (s *Server) rotateSessionKey(w http.ResponseWriter, r *http.Request) {
	if s.sessions == nil {
		s.adminError(w, r, http.StatusNotFound, errNoSessions)
		return
	}
	kid, err := s.sessions.Rotate()
	if err != nil {
		s.internalError(w, r, fmt.Errorf("rotate the session signing key: %w", err))
		return
	}
	s.log.Info("session signing key rotated", "key_id", kid)
	if err := s.auditSessionKey(r, "session_key.rotate", kid, "new current key"); err != nil {
		s.internalError(w, r, fmt.Errorf("session signing key rotated to %s, but its audit entry failed: %w", kid, err))
		return
	}
	writeJSON(w, http.StatusOK, meshapi.SessionKeyRotateResponse{KeyID: kid})
}

// dropSessionKey is DELETE /admin/session-keys/{kid}: the rotated-out
// key kid stops verifying tokens at once, here and, once they fetch the
// JWKS again, at every verifier. The current key cannot be dropped
// (rotate first); an unknown id changes nothing.
func (s *Server) dropSessionKey(w http.ResponseWriter, r *http.Request) {
	if s.sessions == nil {
		s.adminError(w, r, http.StatusNotFound, errNoSessions)
		return
	}
	kid := r.PathValue("kid")
	switch err := s.sessions.Drop(kid); {
	case errors.Is(err, meshauth.ErrKeyCurrent):
		s.adminError(w, r, http.StatusConflict, fmt.Sprintf("session key %q is the current signing key: rotate first (meshctl session rotate-key), then drop it", kid))
		return
	case errors.Is(err, meshauth.ErrKeyUnknown):
		s.adminError(w, r, http.StatusNotFound, fmt.Sprintf("no rotated-out session key %q is accepted: list the keys with meshctl session keys", kid))
		return
	case err != nil:
		s.internalError(w, r, fmt.Errorf("drop session signing key %s: %w", kid, err))
		return
	}
	s.log.Warn("session signing key dropped: its tokens are refused", "key_id", kid)
	if err := s.auditSessionKey(r, "session_key.drop", kid, "rotated-out key dropped before its overlap ended"); err != nil {
		s.internalError(w, r, fmt.Errorf("session key %s dropped, but its audit entry failed: %w", kid, err))
		return
	}
	writeJSON(w, http.StatusOK, s.sessionKeys())
}

// auditSessionKey records an operator's change of the session keys.
func (s *Server) auditSessionKey(r *http.Request, action, kid, detail string) error {
	return s.st.Append(context.WithoutCancel(r.Context()), store.AuditEntry{Time: s.cfg.Now(), Action: action, Identity: "session-key:" + kid, Outcome: store.OutcomeOK, Detail: detail})
}
