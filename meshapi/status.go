package meshapi

import "time"

// Status is the body of GET /admin/status: whether the mesh this meshd
// serves is healthy, on one screen (`meshctl status`). Every part is
// computed from what meshd holds when asked (store, registry, CA, change
// feed); Problems lists what needs an operator's attention, empty when
// nothing does.
type Status struct {
	Service string `json:"service"`
	Version string `json:"version"`
	// Time is meshd's clock at the answer; the ages below are against it.
	Time          time.Time `json:"time"`
	UptimeSeconds int64     `json:"uptime_seconds"`
	// Health is GET /health's status, "healthy" or "degraded"; Degraded
	// lists why.
	Health   string        `json:"health"`
	Degraded []Degradation `json:"degraded,omitempty"`
	// CA and CRL are nil on a meshd without a mesh CA.
	CA           *StatusCA           `json:"ca,omitempty"`
	CRL          *StatusCRL          `json:"crl,omitempty"`
	Agents       StatusAgents        `json:"agents"`
	Certificates *StatusCertificates `json:"certificates,omitempty"`
	Audit        StatusAudit         `json:"audit"`
	Feed         StatusFeed          `json:"feed"`
	Problems     []StatusProblem     `json:"problems"`
}

// Components of a StatusProblem.
const (
	ComponentHealth       = "health"
	ComponentCA           = "ca"
	ComponentCRL          = "crl"
	ComponentCertificates = "certificates"
	ComponentAudit        = "audit"
	ComponentFeed         = "feed"
)

// Severities of a StatusProblem: an error is broken now, a warning will
// be unless someone acts.
const (
	SeverityError   = "error"
	SeverityWarning = "warning"
)

// StatusProblem is one thing that needs attention.
type StatusProblem struct {
	// Component is the part of Status it concerns ("ca", "crl",
	// "certificates", "audit", "feed", "health").
	Component string `json:"component"`
	Severity  string `json:"severity"`
	// Message says what is wrong and what to do, for a person.
	Message string `json:"message"`
}

// StatusCA is the mesh CA's root and intermediates.
type StatusCA struct {
	Root   StatusCACert `json:"root"`
	Active StatusCACert `json:"active_intermediate"`
	// Prepared is the intermediate in the prepared slot, if any.
	Prepared *StatusCACert `json:"prepared_intermediate,omitempty"`
}

// StatusCACert is one CA certificate: its subject, its end, and the whole
// days left until then (negative once expired).
type StatusCACert struct {
	Subject  string    `json:"subject"`
	NotAfter time.Time `json:"not_after"`
	DaysLeft int       `json:"days_left"`
}

// StatusCRL is the active intermediate's newest CRL as crl.pem holds it.
type StatusCRL struct {
	// Number is the CRL number in decimal.
	Number     string    `json:"number"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update"`
	AgeSeconds int64     `json:"age_seconds"`
}

// StatusAgents counts the agents this meshd's registry holds.
type StatusAgents struct {
	Total int `json:"total"`
	// ByStatus counts by "healthy", "unhealthy", "evicted".
	ByStatus map[string]int `json:"by_status"`
	// ByEntity counts the agents that are not evicted by entity, "" for
	// the mesh's own; BySource by the trust backend that admitted them,
	// "" for agents registered without a certificate. Both by name.
	ByEntity []StatusGroup `json:"by_entity"`
	BySource []StatusGroup `json:"by_source"`
}

// StatusGroup is how many agents one entity or trust source has.
type StatusGroup struct {
	Name   string `json:"name"`
	Agents int    `json:"agents"`
}

// StatusCertificates summarises the live leaf certificates the store
// recorded (not expired, not revoked, the newest of each name).
type StatusCertificates struct {
	Live int `json:"live"`
	// RenewalDue counts those past their renewal point (2/3 of their
	// lifetime by default) whose holder has not renewed; ExpiringSoon
	// those that end within ExpiringWithinDays.
	RenewalDue         int `json:"renewal_due"`
	ExpiringSoon       int `json:"expiring_soon"`
	ExpiringWithinDays int `json:"expiring_within_days"`
	// Due lists the first of them, soonest end first.
	Due []StatusDueCert `json:"due,omitempty"`
}

// StatusDueCert is one certificate due for renewal.
type StatusDueCert struct {
	CommonName string    `json:"common_name"`
	Serial     string    `json:"serial"`
	NotAfter   time.Time `json:"not_after"`
}

// StatusAudit is the last verification of the audit log's hash chain and
// its signed checkpoints.
type StatusAudit struct {
	// VerifiedAt is when it ran; OnRequest says it ran for a status
	// request (meshd checkpoints the log's head on its own, but verifies
	// the whole chain only when asked).
	VerifiedAt time.Time `json:"verified_at"`
	OnRequest  bool      `json:"on_request"`
	OK         bool      `json:"ok"`
	Entries    int       `json:"entries"`
	// Checkpoints is how many signed checkpoints matched the log.
	Checkpoints int `json:"checkpoints"`
	// Error says what does not fit, when OK is false.
	Error string `json:"error,omitempty"`
}

// StatusFeed is this meshd's view of the change feed, which carries
// revocations and trust changes across replicas.
type StatusFeed struct {
	// Pending counts events some effect failed to apply, being retried.
	Pending int `json:"pending"`
	// LastPoll is when the feed was last read to its end, absent before
	// the first; SinceLastPollSeconds is its age.
	LastPoll             *time.Time `json:"last_poll,omitempty"`
	SinceLastPollSeconds float64    `json:"since_last_poll_seconds"`
}
