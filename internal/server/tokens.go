package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
)

// Join token lifetimes.
const (
	DefaultTokenTTL = time.Hour
	MaxTokenTTL     = 7 * 24 * time.Hour
)

// createToken is POST /admin/tokens: a one-time token that enrolls exactly
// one node.
func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	if s.auth == nil {
		s.adminError(w, r, http.StatusNotFound, "this meshd has no local CA to enroll nodes with")
		return
	}
	var req meshapi.TokenRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		s.adminError(w, r, http.StatusBadRequest, "body must be JSON {\"node_id\", \"ttl\"}: "+err.Error())
		return
	}
	if _, err := identity.NewNode(req.NodeID); err != nil {
		s.adminError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	ttl := DefaultTokenTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > MaxTokenTTL {
			s.adminError(w, r, http.StatusBadRequest, fmt.Sprintf("ttl %q: want a duration between 1s and %s", req.TTL, MaxTokenTTL))
			return
		}
		ttl = d
	}
	token, expires, err := s.createJoinToken(r.Context(), req.NodeID, ttl)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, meshapi.TokenResponse{Token: token, NodeID: req.NodeID, ExpiresAt: expires, RootFingerprint: trust.Fingerprint(s.auth.Root())})
}

// createJoinToken records, and returns, a one-time token that enrolls
// node nodeID (a valid node id) until ttl from now, and when it expires.
// Only its hash is stored, with an audit entry.
func (s *Server) createJoinToken(ctx context.Context, nodeID string, ttl time.Duration) (string, time.Time, error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", time.Time{}, err
	}
	token := tokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	hash := tokenHash(token)
	now := s.cfg.Now()
	t := store.JoinToken{Hash: hash, NodeID: nodeID, CreatedAt: now.UTC(), ExpiresAt: now.Add(ttl).UTC()}
	a := store.AuditEntry{Time: now, Action: "token.create", Identity: nodeID + ".mesh", Outcome: store.OutcomeOK,
		Detail: fmt.Sprintf("token %s until %s", hash[:12], t.ExpiresAt.Format(time.RFC3339))}
	if err := s.st.PutToken(ctx, t, a); err != nil {
		if errors.Is(err, store.ErrExists) {
			err = errors.New("token collision; try again")
		}
		return "", time.Time{}, err
	}
	return token, t.ExpiresAt, nil
}

// tokenHash is the hex SHA-256 of a join token: all the store keeps of
// it, and what /enroll's join-token provisioner spends.
func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
