// Package meshapi holds the JSON bodies of meshd's own HTTP API: node
// enrollment and certificate renewal on the agent port, the revocation
// stream, and the admin API. meshd and every client of it (the enrollment
// client, the revocation watcher, meshctl) encode and decode these types,
// so the two ends of a route cannot drift apart.
//
// The field names are the wire's and are kept for compatibility: a field
// may be added, never renamed. The heartbeat's bodies (Registration,
// HeartbeatResponse) follow MCP Mesh's protocol, so that its agents speak
// to meshd unchanged; the registry and the agent SDK both use them. GET
// /agents follows MCP Mesh too and is described by the registry.
//
// The package imports only the standard library.
package meshapi

import "time"

// Routes of the agent port.
const (
	// PathEnroll is POST: EnrollRequest in, IssuedCert out. The only route
	// that accepts a bootstrap credential (Authorization: Bearer).
	PathEnroll = "/enroll"
	// PathAgentCert is POST over mTLS with a node certificate:
	// AgentCertRequest in, IssuedCert out.
	PathAgentCert = "/agent-cert"
	// PathRenew is POST over mTLS: RenewRequest in, RenewResponse out.
	PathRenew = "/renew"
	// PathCRL is GET: the CRL in DER, or every live intermediate's CRL in
	// PEM on Accept: application/x-pem-file. Not JSON.
	PathCRL = "/crl"
	// PathBundle is GET: the root and every live intermediate in PEM. Not
	// JSON.
	PathBundle = "/bundle"
	// PathRevocationsWatch is GET: a text/event-stream whose events of
	// type EventRevocation carry a RevocationEvent.
	PathRevocationsWatch = "/revocations/watch"
	// PathSessionAttach is POST over mTLS: SessionAttachRequest in,
	// SessionAttachResponse out (the seed's session.attach).
	PathSessionAttach = "/session/attach"
	// PathSessionJWKS is GET: the JSON Web Key Set that verifies session
	// tokens. Public, like the bundle.
	PathSessionJWKS = "/session/jwks"
)

// Routes of the admin API (the unix socket, or the mTLS admin listener).
const (
	// PathAdminEntities is GET (EntityList out) and POST
	// (RegisterEntityRequest in, RegisterEntityResponse out); DELETE
	// PathAdminEntities + "/" + name answers RevokeEntityResponse.
	PathAdminEntities = "/admin/entities"
	// PathAdminRotate is POST, with an optional ?entity_id=:
	// RotateResponse out.
	PathAdminRotate = "/admin/rotate"
	// PathAdminRevoke is POST: RevokeRequest in, RevokeResponse out.
	PathAdminRevoke = "/admin/revoke"
	// PathAdminReinstate is POST: ReinstateRequest in, ReinstateResponse
	// out.
	PathAdminReinstate = "/admin/reinstate"
	// PathAdminAgents is GET (the agents) and, with /{agent_id}, DELETE:
	// release the id, ReleaseResponse out.
	PathAdminAgents = "/admin/agents"
	// PathAdminTokens is POST: TokenRequest in, TokenResponse out.
	PathAdminTokens = "/admin/tokens"
	// PathAdminPolicies + "/" + name is GET (Policy out) and PUT (Policy
	// in, Policy out); PathAdminPolicies + "/" + name + "/check" is POST
	// (PolicyCheckRequest in, PolicyCheckResponse out).
	PathAdminPolicies = "/admin/policies"
	// PathAdminSessionKeys is GET: the session signing keys whose tokens
	// are accepted (SessionKeysResponse). + "/rotate" is POST: a new
	// session signing key (SessionKeyRotateResponse out). + "/{kid}" is
	// DELETE: drop the rotated-out key kid at once (SessionKeysResponse
	// out, the keys left).
	PathAdminSessionKeys = "/admin/session-keys"
	// PathAdminConsoleLogin (POST, admin API; empty body): a one-time
	// login to the operator console, ConsoleLogin out. `meshctl console`
	// asks for it and prints the URL.
	PathAdminConsoleLogin = "/admin/console/login"
	// PathConsole is the prefix of the operator console's pages, served
	// on the admin surface only; `meshctl console` forwards nothing else.
	PathConsole = "/console/"
	// PathAdminStatus is GET: Status out, meshd's health on one screen
	// (`meshctl status`).
	PathAdminStatus = "/admin/status"
)

// ConsoleLogin is a one-time login to the operator console: Path (under
// PathConsole, carrying the token) is good for one visit until ExpiresAt,
// and logs the browser in as the admin identity that asked for it.
type ConsoleLogin struct {
	Path      string    `json:"path"`
	ExpiresAt time.Time `json:"expires_at"`
}

// EventRevocation is the SSE event type of a revocation on
// PathRevocationsWatch; its data is a RevocationEvent.
const EventRevocation = "revocation"

// EventCATainted is the SSE event type, on PathRevocationsWatch, of an
// intermediate an operator marked tainted (`meshctl ca
// rotate-intermediate taint`); its data is a TaintEvent. meshd sends it
// when a rotation leaves an intermediate tainted, and to every new
// subscriber while one is. It carries no id: it is state, not a step of
// the feed, and is sent again on every connection. Clients that predate
// it ignore an event type they do not know.
const EventCATainted = "ca.tainted"

// TaintEvent is the data of an EventCATainted event: every holder of a
// certificate issued by IssuerKeyID is to renew now, with jitter (the
// renew_after of its next renewal, or HeaderRenewAfter, says when).
type TaintEvent struct {
	// IssuerKeyID is the tainted intermediate's subject key id,
	// lowercase hex: the authority key id of the leaves it signed.
	IssuerKeyID string `json:"issuer_key_id"`
	// Time is when it was tainted, in UTC.
	Time time.Time `json:"time"`
}

// HeaderRenewAfter is the response header meshd adds, on the agent port,
// to its answers (the heartbeat's included) to a caller whose certificate
// was issued by a tainted intermediate: when to renew it, RFC 3339 UTC.
// Absent otherwise, so MCP Mesh's agents see the answers they know.
const HeaderRenewAfter = "Meshtrust-Renew-After"

// ErrorResponse is the body of every answer outside 2xx, on the agent port
// and the admin API alike.
type ErrorResponse struct {
	// Error says what went wrong and what to do next, for a person.
	Error string `json:"error"`
	// Reason is a machine-readable refusal reason ("revoked",
	// "rate_limited", ...), set on the agent port's refusals.
	Reason string `json:"reason,omitempty"`
	// Timestamp is meshd's clock at the answer, RFC 3339 with nanoseconds.
	Timestamp string `json:"timestamp"`
}

// Degradation is one entry of GET /health's "degraded" list: a part of
// meshd that refuses what it would otherwise admit while the rest
// serves. /health answers 200 with status "degraded" while the list is
// not empty, so agents that do not care keep going.
type Degradation struct {
	// Component names the part: "trust backend spire".
	Component string `json:"component"`
	// Reason is the refusal reason its callers get: "stale_trust".
	Reason string `json:"reason"`
	// Since is when the cause began (for stale_trust, when the Workload
	// API stream broke).
	Since time.Time `json:"since"`
}

// EnrollRequest is the body of POST /enroll: a new node's id and its CSR.
type EnrollRequest struct {
	NodeID string `json:"node_id"`
	// CSR is the PKCS #10 request in PEM; the key never leaves the node.
	CSR string `json:"csr"`
}

// AgentCertRequest is the body of POST /agent-cert, and one agent of a
// RenewRequest: a CSR for agent AgentID of the calling node.
type AgentCertRequest struct {
	AgentID string `json:"agent_id"`
	// CSR is the PKCS #10 request in PEM.
	CSR string `json:"csr"`
}

// IssuedCert is a certificate meshd issued: the answer to POST /enroll and
// POST /agent-cert, and (embedded, and per agent) of POST /renew.
type IssuedCert struct {
	// AgentID names the agent, in RenewResponse.Agents only.
	AgentID string `json:"agent_id,omitempty"`
	// Certificate is the leaf in PEM.
	Certificate string `json:"certificate"`
	// Chain is the issuing intermediate and the root in PEM. It is left
	// out of RenewResponse.Agents, which share the node's chain.
	Chain  string `json:"chain,omitempty"`
	Serial string `json:"serial"` // lowercase hex
	// NotAfter is the leaf's expiry, in UTC.
	NotAfter time.Time `json:"not_after"`
	// RenewAfter is when meshd suggests the holder renew this
	// certificate (RFC 3339, UTC): normally 2/3 into its life, sooner
	// for a leaf of a tainted intermediate. A holder renews at it, or
	// by its own rule when that is earlier; meshd before 0.4 leaves it
	// out, and the holder's own rule alone applies.
	RenewAfter time.Time `json:"renew_after,omitzero"`
}

// RenewRequest is the body of POST /renew: a CSR for the caller's own
// identity and, from a node, CSRs for its agents.
type RenewRequest struct {
	// CSR is the PKCS #10 request in PEM for a new key; empty keeps the
	// key of the certificate the call is authenticated with.
	CSR    string             `json:"csr,omitempty"`
	Agents []AgentCertRequest `json:"agents,omitempty"`
}

// RenewResponse is the answer to POST /renew: the caller's certificate
// and the agents' certificates (never null).
type RenewResponse struct {
	IssuedCert
	Agents []IssuedCert `json:"agents"`
}

// RevocationEvent is the data of one "revocation" event on GET
// /revocations/watch; the event's id is Seq.
type RevocationEvent struct {
	// Seq increases with every change meshd records; a subscriber resumes
	// after the event's id (Last-Event-ID), which can lag Seq when events
	// commit out of order.
	Seq int64 `json:"seq"`
	// Kind is "cert.revoked", "identity.revoked", "identity.reinstated" or
	// "entity.revoked". Clients that predate it tell the kinds apart by
	// Serial and Entity.
	Kind string `json:"kind,omitempty"`
	// Serial (lowercase hex) is set for a certificate revocation, Entity
	// for an entity's, CommonName alone for an identity's.
	Serial string `json:"serial,omitempty"`
	// IssuerKeyID is the lowercase hex subject key id of the CA that
	// issued Serial.
	IssuerKeyID string `json:"issuer_key_id,omitempty"`
	CommonName  string `json:"common_name,omitempty"`
	Entity      string `json:"entity,omitempty"`
	// KeyHash is the lowercase hex SHA-256 of the revoked certificate's
	// SubjectPublicKeyInfo when its key is revoked too (keyCompromise):
	// every certificate of that key is refused.
	KeyHash string `json:"key_hash,omitempty"`
	// Reason is the RFC 5280 CRLReason name ("keyCompromise"), or
	// "entity revoked", or "reinstated".
	Reason string `json:"reason"`
	// Time is when the revocation was made, in UTC.
	Time time.Time `json:"time"`
}

// RevokeRequest is the body of POST /admin/revoke.
type RevokeRequest struct {
	// Target is a serial, or a common name (every unexpired certificate
	// of that name is revoked).
	Target string `json:"target"`
	// Reason is an RFC 5280 CRLReason name; empty means unspecified.
	Reason string `json:"reason"`
}

// RevokeResponse is the answer to POST /admin/revoke.
type RevokeResponse struct {
	Revoked []RevokedCert `json:"revoked"`
	// Identity is set when the target was a name: the identity revoked,
	// so that no certificate is issued to it (nor, for a node, to its
	// agents) until it is reinstated.
	Identity string `json:"identity,omitempty"`
	// EvictedAgents and ClosedConnections are what meshd did before it
	// answered.
	EvictedAgents     int `json:"evicted_agents,omitempty"`
	ClosedConnections int `json:"closed_connections,omitempty"`
	// Warning is set when the revocations are durable but applying them
	// failed in part; the revocation stands.
	Warning string `json:"warning,omitempty"`
}

// ReleaseResponse is the answer to DELETE /admin/agents/{agent_id}: the
// id is free for the next certificate that may speak for it.
type ReleaseResponse struct {
	AgentID string `json:"agent_id"`
	Message string `json:"message"`
}

// ReinstateRequest is the body of POST /admin/reinstate.
type ReinstateRequest struct {
	// Identity is the revoked identity's name (ct111.mesh, opus@ct111,
	// alice@external).
	Identity string `json:"identity"`
}

// ReinstateResponse is the answer to POST /admin/reinstate.
type ReinstateResponse struct {
	Identity string `json:"identity"`
	Message  string `json:"message"`
}

// RevokedCert is one certificate of a RevokeResponse. Its field names are
// the Go names, not snake_case: they have been on the wire (and in
// `meshctl ca revoke --json`) in that form, so they stay.
type RevokedCert struct {
	Seq         int64  `json:"Seq"`
	Serial      string `json:"Serial"`
	CommonName  string `json:"CommonName"`
	IssuerKeyID string `json:"IssuerKeyID"`
	// Reason is the RFC 5280 CRLReason code.
	Reason    int       `json:"Reason"`
	RevokedAt time.Time `json:"RevokedAt"`
	// KeyHash is set when the revocation also revoked the key
	// (keyCompromise): the SHA-256 of its SubjectPublicKeyInfo.
	KeyHash string `json:"KeyHash"`
}

// EntityInfo is one entity of GET /admin/entities.
type EntityInfo struct {
	Name    string `json:"name"`
	Subject string `json:"subject"` // of the entity's first CA certificate
	// Expires is NotAfter's date (UTC, 2006-01-02), for display.
	Expires     string    `json:"expires"`
	NotAfter    time.Time `json:"not_after"`
	Fingerprint string    `json:"fingerprint_sha256"` // of the CA certificate, lowercase hex
	// Source is "meshd" (registered in its store) or "filestore" (found in
	// the trust dir).
	Source string `json:"source"`
	// Status is "active" or "revoked".
	Status    string     `json:"status"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	// Agents counts the entity's agents that are not evicted.
	Agents int `json:"agents"`
	// Namespace is the agent ids the entity's agents may claim: "prefix"
	// (<name>-…), "first-claim" or "ids:<id>,…".
	Namespace string `json:"namespace"`
}

// EntityList is the answer to GET /admin/entities, sorted by name (never
// null).
type EntityList struct {
	Entities []EntityInfo `json:"entities"`
}

// RegisterEntityRequest is the body of POST /admin/entities.
type RegisterEntityRequest struct {
	Name string `json:"name"`
	// CACert is the entity's CA certificate(s) in PEM form.
	CACert string `json:"ca_cert"`
	// Force replaces an entity of the same name.
	Force bool `json:"force"`
	// Namespace is the agent ids the entity's agents may claim: "prefix"
	// (the default: ids starting with "<name>-"), "first-claim" (any id
	// no one claimed, first come), or "ids:<id>,<id>,…".
	Namespace string `json:"namespace,omitempty"`
}

// RegisterEntityResponse is the answer to POST /admin/entities. (Fields in
// the order meshd has always sent them.)
type RegisterEntityResponse struct {
	Expires     string `json:"expires"` // 2006-01-02, UTC
	Fingerprint string `json:"fingerprint_sha256"`
	Message     string `json:"message"`
	Name        string `json:"name"`
	Subject     string `json:"subject"`
}

// RevokeEntityResponse is the answer to DELETE /admin/entities/{name}:
// what revoking the entity did before meshd answered.
type RevokeEntityResponse struct {
	ClosedConnections int    `json:"closed_connections"`
	EvictedAgents     int    `json:"evicted_agents"`
	Message           string `json:"message"`
	Name              string `json:"name"`
}

// RotateResponse is the answer to POST /admin/rotate: how many agents
// will re-register on their next heartbeat.
type RotateResponse struct {
	AffectedAgents int `json:"affected_agents"`
	// EntityID is the entity asked for, empty for all agents.
	EntityID string `json:"entity_id"`
	Message  string `json:"message"`
}

// TokenRequest is the body of POST /admin/tokens.
type TokenRequest struct {
	NodeID string `json:"node_id"`
	// TTL is a Go duration ("1h"); empty means meshd's default (1h).
	TTL string `json:"ttl"`
}

// TokenResponse is the answer to POST /admin/tokens. Token is shown once:
// meshd keeps only its hash.
type TokenResponse struct {
	Token     string    `json:"token"`
	NodeID    string    `json:"node_id"`
	ExpiresAt time.Time `json:"expires_at"`
	// RootFingerprint is the mesh root's SHA-256 (lowercase hex), for
	// `meshctl enroll --ca-fingerprint`.
	RootFingerprint string `json:"root_fingerprint"`
}

// SessionAttachRequest is the body of POST /session/attach: the agent id
// the caller claims, which its certificate must be allowed to speak for
// by the registry's rules (its trust source's binding, its entity's
// namespace, the id's first claim), as for a heartbeat.
type SessionAttachRequest struct {
	AgentID string `json:"agent_id"`
}

// SessionAttachResponse is a session token bound to the caller's client
// certificate. Send it as "Authorization: Bearer <token>" on a connection
// made with that certificate.
type SessionAttachResponse struct {
	Token     string    `json:"token"`
	TokenType string    `json:"token_type"`
	SessionID string    `json:"session_id"`
	AgentID   string    `json:"agent_id"`
	Identity  string    `json:"identity"`
	ExpiresAt time.Time `json:"expires_at"`
}

// SessionKeyRotateResponse names the new session signing key.
type SessionKeyRotateResponse struct {
	KeyID string `json:"key_id"`
}

// SessionKey is a session signing key whose tokens are accepted: the
// current one, or the rotated-out one until its overlap ends.
type SessionKey struct {
	KeyID   string `json:"key_id"`
	Current bool   `json:"current"`
	// Until is when a rotated-out key stops being accepted.
	Until time.Time `json:"until,omitzero"`
}

// SessionKeysResponse lists the session signing keys, the current one
// first.
type SessionKeysResponse struct {
	Keys []SessionKey `json:"keys"`
}

// Policy is an allow-list policy kept in meshd's store: its YAML
// document, and on answers the time it was set and its rule count.
type Policy struct {
	Name     string    `json:"name"`
	Document string    `json:"document"`
	Rules    int       `json:"rules,omitempty"`
	Updated  time.Time `json:"updated,omitzero"`
}

// PolicyCheckRequest asks whether Identity, on a certificate of trust
// source Source (a backend: "localca", the mesh CA, by default; "filestore",
// "entities", "spire", ...) and Entity ("" for the mesh's own CAs), may
// perform Operation ("GET /admin/agents", "grpc /pkg.S/Method", "mcp
// tools/call search"). The modelled caller bears only the names its source
// vouches for, as a real one would.
type PolicyCheckRequest struct {
	Identity  string `json:"identity"`
	Source    string `json:"source,omitempty"`
	Entity    string `json:"entity,omitempty"`
	Operation string `json:"operation"`
}

// PolicyCheckResponse is the decision and the rule that made it.
type PolicyCheckResponse struct {
	Allowed bool   `json:"allowed"`
	Rule    string `json:"rule"`
}
