package meshauth

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshtrust/meshtrust/trust"
)

// Reasons a request is refused, beyond trust's certificate reasons
// (trust.ReasonNoCertificate, trust.ReasonRevoked, ...). They are the
// "reason" of a refusal's body and a label of the decisions metric.
const (
	ReasonForbidden      = "forbidden"
	ReasonTokenInvalid   = "token_invalid"
	ReasonTokenExpired   = "token_expired"
	ReasonTokenBinding   = "token_wrong_certificate"
	ReasonTokenNoCert    = "token_without_certificate"
	ReasonLegacyExpired  = "legacy_bearer_expired"
	ReasonLegacyRefused  = "legacy_bearer_refused"
	ReasonHeaderMismatch = "header_mismatch"
	ReasonBadRequest     = "bad_request"
	ReasonConnClosed     = "connection_evicted"
	// reasonAllowed labels allowed decisions in the metric.
	reasonAllowed = "allowed"
)

// Config configures an Auth.
type Config struct {
	// Chain verifies client certificates; its RevocationSet (kept current
	// by trust/watch, or by meshd itself) refuses revoked certificates,
	// identities and entities. Required.
	Chain *trust.Chain
	// Authorizer decides what a verified caller may do. Required: with
	// none, nothing would be allowed (use AuthorizeAny for "any verified
	// caller").
	Authorizer Authorizer
	// Tokens verifies session tokens (a Sessions, or a KeySet read from a
	// JWKS). Without it the Authorization header is not read, but for the
	// Legacy path.
	Tokens TokenKeys
	// TokenIssuer is the iss a session token must carry, the issuer this
	// service trusts (meshd's --session-issuer); default
	// DefaultSessionIssuer. TokenAudience is this service's audience,
	// which a token's aud must list (one of meshd's --session-audience);
	// default DefaultSessionAudience. When Tokens is the service's own
	// Sessions, their defaults are its Issuer and first Audience.
	TokenIssuer, TokenAudience string
	// Legacy, when set, admits callers without a certificate that present
	// its shared secret as a bearer, until its deadline; see Legacy.
	Legacy *Legacy
	// Anonymous lets callers without a certificate reach the Authorizer
	// as a Caller named AnonymousName, so a policy can allow them a few
	// operations (a health check). Off, they are refused with 401.
	Anonymous bool
	// Registerer registers the decisions metric; nil keeps it
	// unregistered.
	Registerer prometheus.Registerer
	// DecisionLog, when set, receives one line per decision: who, what,
	// which rule, allow or deny. Never a token, a secret or a call's
	// arguments.
	DecisionLog *slog.Logger
	// MaxBody bounds an MCP request body; default 4 MiB.
	MaxBody int64
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// AnonymousName is the Name of a caller without a certificate when
// Config.Anonymous is set, and the principal a policy names to allow it.
const AnonymousName = "anonymous"

// Legacy is the opt-in, time-boxed legacy bearer path for a
// shared-secret cut-over: a caller without a client certificate that
// sends "Authorization: Bearer <Secret>" is admitted as LegacyName until
// Until, and refused with a reason saying the path has ended after.
type Legacy struct {
	Secret string
	// Until is when the path ends; required, so it cannot be left on by
	// accident.
	Until time.Time
}

// Auth is the middleware: build it once per service with New, then wrap
// handlers (Handler, MCP) or install its gRPC interceptors.
type Auth struct {
	cfg       Config
	conns     *connTracker
	decisions *prometheus.CounterVec
	allowed   prometheus.Counter
}

// New returns an Auth, or an error naming what cfg lacks.
func New(cfg Config) (*Auth, error) {
	if cfg.Chain == nil {
		return nil, errors.New("meshauth: Config.Chain is required")
	}
	if cfg.Authorizer == nil {
		return nil, errors.New("meshauth: Config.Authorizer is required (AuthorizeAny allows every verified caller)")
	}
	if cfg.Legacy != nil {
		if cfg.Legacy.Secret == "" {
			return nil, errors.New("meshauth: Config.Legacy needs a Secret")
		}
		if cfg.Legacy.Until.IsZero() {
			return nil, errors.New("meshauth: Config.Legacy needs an Until: the legacy bearer path is time-boxed")
		}
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 4 << 20
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Auth{cfg: cfg, conns: newConnTracker()}
	a.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshauth_decisions_total",
		Help: "Requests decided by meshauth, by outcome (allow, deny) and reason.",
	}, []string{"outcome", "reason"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(a.decisions); err != nil {
			return nil, fmt.Errorf("meshauth: register metric: %w", err)
		}
	}
	a.allowed = a.decisions.WithLabelValues("allow", reasonAllowed)
	return a, nil
}

// refusal is why a request was refused: the status code, the reason
// label, and a sentence for the caller.
type refusal struct {
	code   int
	reason string
	detail string
	cause  error // the trust error, when a certificate was refused
}

func (r *refusal) Error() string { return r.detail }

// Unwrap returns the trust error of a refused certificate
// (trust.ErrNoCertificate, trust.ErrRevoked, ...).
func (r *refusal) Unwrap() error { return r.cause }

// Reason returns the machine-readable reason of an error Identify
// returned: one of trust's Reason constants or of this package's.
func Reason(err error) string {
	var rf *refusal
	if errors.As(err, &rf) {
		return rf.reason
	}
	return trust.Reason(err)
}

func unauthenticated(reason, format string, args ...any) *refusal {
	return &refusal{code: 401, reason: reason, detail: fmt.Sprintf(format, args...)}
}

// Verified is one request's verified caller, as Verify returns it and as
// the middleware carries it in the request's context: the Caller, and
// what RecheckVerified needs to tell whether trust changed since (the
// trust generation the caller was verified at, the chain presented). It
// is a value: holding it copies nothing of the request.
type Verified struct {
	// Caller is the verified caller; nil in the zero Verified.
	Caller *Caller
	gen    uint64
	chain  []*x509.Certificate // as presented, for RecheckVerified
}

// Peer returns the certificate the caller presented as the chain
// verified it; nil for a caller without one (legacy, anonymous) and for
// the zero Verified.
func (v Verified) Peer() *trust.Peer {
	if v.Caller == nil {
		return nil
	}
	return v.Caller.Peer
}

// identify returns the caller of a request: its verified certificate
// (cached on cs, when the connection is tracked), the session its token
// names, or the legacy or anonymous caller. bearer is the Authorization
// header's bearer credential, "" without one.
func (a *Auth) identify(ctx context.Context, cs *conn, state *tls.ConnectionState, bearer string) (*Caller, uint64, *refusal) {
	gen := a.cfg.Chain.Generation()
	if state == nil || len(state.PeerCertificates) == 0 {
		c, rf := a.certless(bearer)
		return c, gen, rf
	}
	caller, err := a.certCaller(ctx, cs, state, gen)
	if err != nil {
		var rf *refusal
		if errors.As(err, &rf) {
			return nil, gen, rf
		}
		rf = unauthenticated(trust.Reason(err), "%s", err.Error())
		rf.cause = err
		return nil, gen, rf
	}
	if bearer == "" || a.cfg.Tokens == nil {
		return caller, gen, nil
	}
	if cs != nil {
		cs.mu.Lock()
		if cs.gen == gen && cs.token == bearer {
			tc, terr := cs.tokenCaller, cs.tokenErr
			cs.mu.Unlock()
			// A cached session still needs its key: one dropped since
			// (Sessions.Drop, or a KeySet updated without it) ends it.
			if terr == nil && a.cfg.Now().Before(tc.Session.Expires) && a.tokenKeyAccepted(tc.Session.KeyID) {
				return tc, gen, nil
			}
			if terr != nil {
				return nil, gen, terr
			}
		} else {
			cs.mu.Unlock()
		}
	}
	tc, rf := a.session(caller, bearer)
	if cs != nil {
		cs.mu.Lock()
		if cs.gen == gen {
			cs.token, cs.tokenCaller, cs.tokenErr = bearer, tc, rf
		}
		cs.mu.Unlock()
	}
	return tc, gen, rf
}

// certCaller verifies the connection's certificate, at most once per
// connection per trust generation.
func (a *Auth) certCaller(ctx context.Context, cs *conn, state *tls.ConnectionState, gen uint64) (*Caller, error) {
	if cs != nil {
		cs.mu.Lock()
		if cs.done {
			cs.mu.Unlock()
			rf := unauthenticated(ReasonConnClosed, "this connection's certificate lost trust; reconnect with a valid one")
			rf.cause = trust.ErrRevoked
			return nil, rf
		}
		if cs.gen == gen && (cs.caller != nil || cs.err != nil) {
			c, err := cs.caller, cs.err
			cs.mu.Unlock()
			return c, err
		}
		cs.mu.Unlock()
	}
	var caller *Caller
	p, err := a.cfg.Chain.Verify(ctx, state.PeerCertificates)
	if err == nil {
		caller = CallerFromPeer(p)
	}
	if cs != nil {
		cs.mu.Lock()
		if !cs.done {
			cs.caller, cs.err, cs.gen = caller, err, gen
			cs.token, cs.tokenCaller, cs.tokenErr = "", nil, nil
		}
		cs.mu.Unlock()
	}
	return caller, err
}

// certless identifies a caller without a certificate: the legacy bearer,
// the anonymous caller, or nobody.
func (a *Auth) certless(bearer string) (*Caller, *refusal) {
	if bearer != "" && a.cfg.Legacy != nil {
		l := a.cfg.Legacy
		if subtle.ConstantTimeCompare([]byte(bearer), []byte(l.Secret)) == 1 {
			if !a.cfg.Now().Before(l.Until) {
				return nil, unauthenticated(ReasonLegacyExpired, "the legacy shared-secret path ended at %s: present a client certificate of the mesh CA", l.Until.UTC().Format(time.RFC3339))
			}
			return &Caller{Name: LegacyName, Legacy: true}, nil
		}
		return nil, unauthenticated(ReasonLegacyRefused, "client certificate required: the bearer presented is not the legacy shared secret")
	}
	if bearer != "" && a.cfg.Tokens != nil && looksLikeToken(bearer) {
		return nil, unauthenticated(ReasonTokenNoCert, "a session token is accepted only on a connection with the client certificate it is bound to")
	}
	if a.cfg.Anonymous {
		return anonymous, nil
	}
	rf := unauthenticated(trust.ReasonNoCertificate, "client certificate required: connect with the mesh certificate of your agent or node")
	rf.cause = trust.ErrNoCertificate
	return nil, rf
}

var anonymous = &Caller{Name: AnonymousName, Anonymous: true}

// looksLikeToken reports whether a bearer has a compact JWS's shape.
func looksLikeToken(s string) bool { return strings.Count(s, ".") == 2 }

// decide runs the authorizer, counts and logs the decision.
func (a *Auth) decide(c *Caller, op *Operation) (Decision, *refusal) {
	d := a.cfg.Authorizer(c, op)
	if d.Allowed {
		a.allowed.Inc()
		if a.cfg.DecisionLog != nil {
			a.logDecision(c, op, d, reasonAllowed)
		}
		return d, nil
	}
	who := c.Name
	if c.Entity != "" {
		// A partner's certificate may carry a mesh name; say whose it is.
		who = fmt.Sprintf("%s (a certificate of entity %s)", c.Name, c.Entity)
	}
	rf := &refusal{code: 403, reason: ReasonForbidden,
		detail: fmt.Sprintf("%s may not call %s (%s); ask an operator to allow it in the policy", who, op, d.Rule)}
	a.count(rf.reason)
	if a.cfg.DecisionLog != nil {
		a.logDecision(c, op, d, rf.reason)
	}
	return d, rf
}

// refused counts and logs a refusal made before any authorizer ran.
func (a *Auth) refused(op *Operation, rf *refusal) {
	a.count(rf.reason)
	if a.cfg.DecisionLog != nil {
		a.cfg.DecisionLog.Info("meshauth decision", "outcome", "deny", "reason", rf.reason, "operation", op.String(), "detail", rf.detail)
	}
}

func (a *Auth) count(reason string) { a.decisions.WithLabelValues("deny", reason).Inc() }

func (a *Auth) logDecision(c *Caller, op *Operation, d Decision, reason string) {
	outcome := "deny"
	if d.Allowed {
		outcome = "allow"
	}
	args := []any{"outcome", outcome, "who", c.Name, "operation", op.String(), "rule", d.Rule, "reason", reason}
	if c.Source != "" {
		args = append(args, "source", c.Source)
	}
	if c.Entity != "" {
		args = append(args, "entity", c.Entity)
	}
	if c.Session != nil {
		args = append(args, "session", c.Session.ID)
	}
	a.cfg.DecisionLog.Info("meshauth decision", args...)
}

// Recheck re-verifies the caller of ctx when trust changed since its
// request was verified, so that a revocation landing while a request is
// in flight wins over the request's own writes. It returns nil for a
// caller still trusted (and for legacy and anonymous callers).
func (a *Auth) Recheck(ctx context.Context) error {
	v, _ := ctx.Value(callerKey{}).(Verified)
	return a.RecheckVerified(ctx, v)
}

// RecheckVerified is Recheck for a caller Verify returned: it verifies
// v's chain again when the trust generation moved since v was verified,
// and returns nil for a caller still trusted (and for legacy and
// anonymous callers, and the zero Verified, which bear no certificate).
func (a *Auth) RecheckVerified(ctx context.Context, v Verified) error {
	if v.Peer() == nil {
		return nil
	}
	if v.gen == a.cfg.Chain.Generation() {
		return nil
	}
	_, err := a.cfg.Chain.Verify(ctx, v.chain)
	return err
}
