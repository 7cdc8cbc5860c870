package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/meshauth"
)

// AdminPolicy names the policy that decides who may call the admin API
// over mTLS. Until one is set (meshctl policy set meshd-admin), it is
// defaultAdminPolicy: every route to each of Config.AdminIdentities.
const AdminPolicy = "meshd-admin"

// maxPolicyDocument bounds a policy set through the admin API.
const maxPolicyDocument = 4 << 20

// defaultAdminDocument is the admin policy of the admin identities alone.
func defaultAdminDocument(admins []string) string {
	var b strings.Builder
	b.WriteString("# meshd's default admin policy: every admin route to the --admin-identity list.\n")
	b.WriteString("# Replace it with `meshctl policy set meshd-admin <file>`.\nrules:\n  - name: admin-identities\n    who: [")
	for i, a := range admins {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", a)
	}
	b.WriteString("]\n    http: [\"* /**\"]\n")
	return b.String()
}

// storedPolicy returns the document of the policy name: the store's, or
// for AdminPolicy without one, the default.
func (s *Server) storedPolicy(ctx context.Context, name string) (meshapi.Policy, error) {
	p, err := s.st.Policy(ctx, name)
	if errors.Is(err, store.ErrNotFound) && name == AdminPolicy {
		return meshapi.Policy{Name: name, Document: defaultAdminDocument(s.cfg.AdminIdentities)}, nil
	}
	if err != nil {
		return meshapi.Policy{}, err
	}
	return meshapi.Policy{Name: p.Name, Document: p.Document, Updated: p.Updated.UTC()}, nil
}

// LoadAdminPolicy compiles the admin policy into force. A stored policy
// that does not compile (written around meshd) leaves the one in force,
// or the default at start.
func (s *Server) LoadAdminPolicy(ctx context.Context) error {
	doc, err := s.storedPolicy(ctx, AdminPolicy)
	if err != nil {
		return fmt.Errorf("read the admin policy: %w", err)
	}
	p, err := meshauth.ParsePolicy(AdminPolicy, []byte(doc.Document))
	if err != nil {
		s.log.Error("the stored admin policy does not compile; the one in force stays", "err", err)
		if s.adminPolicy.Policy() != nil {
			return nil
		}
		if p, err = meshauth.ParsePolicy(AdminPolicy, []byte(defaultAdminDocument(s.cfg.AdminIdentities))); err != nil {
			return fmt.Errorf("--admin-identity: %w", err)
		}
	}
	s.adminPolicy.Set(p)
	return nil
}

// getPolicy is GET /admin/policies/{name}.
func (s *Server) getPolicy(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	doc, err := s.storedPolicy(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		s.adminError(w, r, http.StatusNotFound, fmt.Sprintf("no policy %q; set one with `meshctl policy set %s <file>`", name, name))
		return
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	if p, err := meshauth.ParsePolicy(name, []byte(doc.Document)); err == nil {
		doc.Rules = p.Rules()
	}
	writeJSON(w, http.StatusOK, doc)
}

// putPolicy is PUT /admin/policies/{name}: a policy that compiles is
// recorded and, through the change feed, takes effect on every replica;
// one that does not is refused with where and why, and nothing changes.
func (s *Server) putPolicy(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := identity.ValidateID(name); err != nil {
		s.adminError(w, r, http.StatusBadRequest, "policy name: "+err.Error())
		return
	}
	var req meshapi.Policy
	if err := json.NewDecoder(io.LimitReader(r.Body, maxPolicyDocument+4096)).Decode(&req); err != nil {
		s.adminError(w, r, http.StatusBadRequest, `body must be JSON {"document": "<the policy's YAML>"}: `+err.Error())
		return
	}
	p, err := meshauth.ParsePolicy(name, []byte(req.Document))
	if err != nil {
		s.adminError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	a := store.AuditEntry{Time: s.cfg.Now(), Action: "policy.set", Identity: name, Outcome: store.OutcomeOK,
		Detail: fmt.Sprintf("%d rules", p.Rules())}
	if err := s.st.PutPolicy(r.Context(), store.Policy{Name: name, Document: req.Document, Updated: a.Time}, a); err != nil {
		s.internalError(w, r, err)
		return
	}
	if _, err := s.events.Poll(r.Context()); err != nil {
		s.internalError(w, r, err)
		return
	}
	s.log.Info("policy set", "policy", name, "rules", p.Rules())
	writeJSON(w, http.StatusOK, meshapi.Policy{Name: name, Document: req.Document, Rules: p.Rules(), Updated: a.Time.UTC()})
}

// checkPolicy is POST /admin/policies/{name}/check: may an identity
// perform an operation, and which rule decides.
func (s *Server) checkPolicy(w http.ResponseWriter, r *http.Request) {
	var req meshapi.PolicyCheckRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		s.adminError(w, r, http.StatusBadRequest, `body must be JSON {"identity", "operation"[, "source", "entity"]}: `+err.Error())
		return
	}
	d, err := s.explain(r.Context(), r.PathValue("name"), req)
	if err != nil {
		s.adminFailed(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, meshapi.PolicyCheckResponse{Allowed: d.Allowed, Rule: d.Rule})
}

// explain decides req against the stored policy name: POST
// /admin/policies/{name}/check and the console's policy explainer.
func (s *Server) explain(ctx context.Context, name string, req meshapi.PolicyCheckRequest) (meshauth.Decision, error) {
	doc, err := s.storedPolicy(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return meshauth.Decision{}, refused(http.StatusNotFound, "no policy %q", name)
	}
	if err != nil {
		return meshauth.Decision{}, err
	}
	p, err := meshauth.ParsePolicy(name, []byte(doc.Document))
	if err != nil {
		return meshauth.Decision{}, refused(http.StatusConflict, "the stored policy does not compile: %v", err)
	}
	td := spiffeid.TrustDomain{}
	if s.auth != nil {
		td = s.auth.TrustDomain()
	}
	// The modelled caller bears what its source may vouch for, as
	// meshauth.CallerFromPeer derives a real one's names (the mesh CA by default).
	c, err := meshauth.ModelCaller(req.Identity, meshauth.ModelSource{Backend: req.Source, Entity: req.Entity}, td)
	if err != nil {
		return meshauth.Decision{}, refused(http.StatusBadRequest, "%v", err)
	}
	op, err := meshauth.ParseOperation(req.Operation)
	if err != nil {
		return meshauth.Decision{}, refused(http.StatusBadRequest, "%v", err)
	}
	return p.Authorize(c, &op), nil
}
