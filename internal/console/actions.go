package console

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
)

// maxField bounds every text field of a form or query the console
// passes on: names, serials, operations.
const maxField = 512

// revokeReasons are the RFC 5280 reasons a revocation may give, as meshd
// accepts them (removeFromCRL undoes a hold and is no reason to revoke).
var revokeReasons = []string{
	"unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
	"cessationOfOperation", "certificateHold", "privilegeWithdrawn", "aACompromise",
}

// field reads one trimmed text field and checks it: at most maxField
// bytes of UTF-8 without control characters; required says whether it
// may be empty.
func field(v string, name string, required bool) (string, error) {
	v = strings.TrimSpace(v)
	switch {
	case v == "" && required:
		return "", fmt.Errorf("%s is required", name)
	case len(v) > maxField:
		return "", fmt.Errorf("%s is longer than %d bytes", name, maxField)
	case !utf8.ValidString(v):
		return "", fmt.Errorf("%s is not UTF-8", name)
	case strings.IndexFunc(v, unicode.IsControl) >= 0:
		return "", fmt.Errorf("%s holds a control character", name)
	}
	return v, nil
}

// canonicalReason returns the RFC 5280 name of a reason as the form gave
// it ("" is unspecified), or an error naming the ones allowed.
func canonicalReason(s string) (string, error) {
	if s == "" {
		return "unspecified", nil
	}
	code, ok := trust.ParseCRLReason(s)
	if ok {
		name := trust.CRLReasonName(code)
		for _, r := range revokeReasons {
			if r == name {
				return name, nil
			}
		}
	}
	return "", fmt.Errorf("unknown revocation reason %q (want one of %s)", s, strings.Join(revokeReasons, ", "))
}

// actionView is an action's form, its confirmation or its outcome.
type actionView struct {
	// Action is "revoke", "reinstate" or "revoke-entity"; Path where
	// its form posts.
	Action, Path string
	// Target is the serial, identity or entity; Reason the revocation's.
	Target, Reason string
	Reasons        []string
	// Effect says exactly what confirming will do.
	Effect string
	// Error is the operator's input error, shown above the form.
	Error string
	// Done is set on the outcome page, Result for a revocation.
	Done   bool
	Result *meshapi.RevokeResponse
}

// revokeEffect says what revoking target will do, in the terms meshd
// reads it (a name is an identity, anything else a serial or a common
// name).
func revokeEffect(target, reason string) string {
	if id, err := identity.Parse(target); err == nil {
		what := "every certificate of the identity " + id.CommonName() + " and every later issuance to it, until an operator reinstates it"
		if id.Kind == identity.KindNode {
			what += "; its agents' certificates with it"
		}
		return "Revoke " + what + ", for reason " + reason + ". The agents it covers are evicted and their connections closed at once."
	}
	if serial, ok := trust.NormalizeSerial(target); ok {
		return "Revoke the certificate with serial " + serial + " (or, if no certificate has that serial, every certificate with the common name " + target + "), for reason " + reason + ". The agents it covers are evicted and their connections closed at once."
	}
	return "Revoke every certificate with the common name " + target + ", for reason " + reason + ". The agents it covers are evicted and their connections closed at once."
}

func (c *Console) revokeForm(w http.ResponseWriter, r *http.Request) {
	v := actionView{Action: "revoke", Path: pathRevoke, Reasons: revokeReasons, Reason: "unspecified"}
	t, err := field(r.URL.Query().Get("target"), "target", false)
	if err != nil {
		v.Error = err.Error()
		c.render(w, r, http.StatusBadRequest, "action", "Revoke", pathRevocations, v)
		return
	}
	v.Target = t
	c.render(w, r, http.StatusOK, "action", "Revoke", pathRevocations, v)
}

// revoke is POST /console/revoke: without confirm equal to the target it
// only shows what would happen; with it, it revokes, as the session's
// admin identity.
func (c *Console) revoke(w http.ResponseWriter, r *http.Request) {
	v := actionView{Action: "revoke", Path: pathRevoke, Reasons: revokeReasons}
	target, err := field(r.PostForm.Get("target"), "target (a serial or an identity)", true)
	if err == nil {
		v.Target = target
		v.Reason, err = canonicalReason(strings.TrimSpace(r.PostForm.Get("reason")))
	}
	if err != nil {
		v.Error = err.Error()
		c.render(w, r, http.StatusBadRequest, "action", "Revoke", pathRevocations, v)
		return
	}
	v.Effect = revokeEffect(v.Target, v.Reason)
	// Compared: the confirm field exactly as posted with the target
	// exactly as acted on (both trimmed), so the confirmation is for
	// this target and no other; the console's own confirm page vouches
	// for it.
	if r.PostForm.Get("confirm") != v.Target {
		c.render(w, r, http.StatusOK, "action", "Confirm revocation", pathRevocations, v)
		return
	}
	actor := sessionOf(r).Actor
	res, err := c.backend.Revoke(r.Context(), actor, v.Target, v.Reason)
	if err != nil {
		c.backendError(w, r, "revoke "+v.Target, err)
		return
	}
	c.log.Info("console: revoked", "actor", actor, "target", v.Target, "reason", v.Reason)
	v.Done, v.Result = true, &res
	c.render(w, r, http.StatusOK, "action", "Revoked", pathRevocations, v)
}

func (c *Console) reinstateForm(w http.ResponseWriter, r *http.Request) {
	c.simpleForm(w, r, "reinstate", pathReinstate, "Reinstate", pathRevocations)
}

func (c *Console) revokeEntityForm(w http.ResponseWriter, r *http.Request) {
	c.simpleForm(w, r, "revoke-entity", pathRevokeEntity, "Revoke entity", pathEntities)
}

func (c *Console) simpleForm(w http.ResponseWriter, r *http.Request, action, path, title, nav string) {
	v := actionView{Action: action, Path: path}
	t, err := field(r.URL.Query().Get("name"), "name", false)
	if err != nil {
		v.Error = err.Error()
		c.render(w, r, http.StatusBadRequest, "action", title, nav, v)
		return
	}
	v.Target = t
	c.render(w, r, http.StatusOK, "action", title, nav, v)
}

// reinstate is POST /console/reinstate: confirm, then lift an identity's
// revocation as the session's admin identity.
func (c *Console) reinstate(w http.ResponseWriter, r *http.Request) {
	c.nameAction(w, r, "reinstate", pathReinstate, "Reinstate", pathRevocations,
		func(n string) string {
			return "Reinstate the identity " + n + ": certificates may be issued to it again. The certificates already revoked stay revoked."
		},
		func(actor, n string) error { return c.backend.Reinstate(r.Context(), actor, n) })
}

// revokeEntity is POST /console/entities/revoke: confirm, then revoke a
// partner entity as the session's admin identity.
func (c *Console) revokeEntity(w http.ResponseWriter, r *http.Request) {
	c.nameAction(w, r, "revoke-entity", pathRevokeEntity, "Revoke entity", pathEntities,
		func(n string) string {
			return "Revoke the entity " + n + ": its CA is no longer trusted, every agent it vouched for is evicted and their connections closed at once."
		},
		func(actor, n string) error { return c.backend.RevokeEntity(r.Context(), actor, n) })
}

func (c *Console) nameAction(w http.ResponseWriter, r *http.Request, action, path, title, nav string, effect func(string) string, do func(actor, name string) error) {
	v := actionView{Action: action, Path: path}
	name, err := field(r.PostForm.Get("name"), "name", true)
	if err != nil {
		v.Error = err.Error()
		c.render(w, r, http.StatusBadRequest, "action", title, nav, v)
		return
	}
	v.Target, v.Effect = name, effect(name)
	// Compared: the confirm field exactly as posted with the name
	// exactly as acted on; the console's own confirm page vouches for it.
	if r.PostForm.Get("confirm") != name {
		c.render(w, r, http.StatusOK, "action", "Confirm: "+title, nav, v)
		return
	}
	actor := sessionOf(r).Actor
	if err := do(actor, name); err != nil {
		c.backendError(w, r, action+" "+name, err)
		return
	}
	c.log.Info("console: "+action, "actor", actor, "name", name)
	v.Done = true
	c.render(w, r, http.StatusOK, "action", title+": done", nav, v)
}

// policyView is the explainer: the stored policies, the question asked,
// and the answer once asked.
type policyView struct {
	Policies []string
	Q        Question
	Asked    bool
	Decision Decision
	Error    string
}

// policyPage is the explainer. Asking is a GET: Explain decides, it
// changes nothing.
func (c *Console) policyPage(w http.ResponseWriter, r *http.Request) {
	pols, err := c.backend.Policies(r.Context())
	if err != nil {
		c.backendError(w, r, "list the policies", err)
		return
	}
	v := policyView{Policies: pols}
	q := r.URL.Query()
	if q.Get("policy") == "" && q.Get("identity") == "" && q.Get("operation") == "" {
		c.render(w, r, http.StatusOK, "policy", "Policy explainer", pathPolicy, v)
		return
	}
	for _, f := range []struct {
		dst      *string
		name     string
		required bool
	}{
		{&v.Q.Policy, "policy", true},
		{&v.Q.Identity, "identity", true},
		{&v.Q.Source, "source", false},
		{&v.Q.Entity, "entity", false},
		{&v.Q.Operation, "operation", true},
	} {
		if *f.dst, err = field(q.Get(f.name), f.name, f.required); err != nil {
			v.Error = err.Error()
			c.render(w, r, http.StatusBadRequest, "policy", "Policy explainer", pathPolicy, v)
			return
		}
	}
	d, err := c.backend.Explain(r.Context(), v.Q)
	if err != nil {
		if errors.Is(err, ErrInput) {
			v.Error = err.Error()
			c.render(w, r, http.StatusBadRequest, "policy", "Policy explainer", pathPolicy, v)
			return
		}
		c.backendError(w, r, "explain the policy", err)
		return
	}
	v.Asked, v.Decision = true, d
	c.render(w, r, http.StatusOK, "policy", "Policy explainer", pathPolicy, v)
}
