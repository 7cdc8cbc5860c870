package console

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/meshtrust/meshtrust/meshapi"
)

// Defaults of the Config knobs left zero.
const (
	DefaultLoginTTL          = 2 * time.Minute
	DefaultIdleTimeout       = 30 * time.Minute
	DefaultSessionLifetime   = 8 * time.Hour
	DefaultMaxLogins         = 32
	DefaultMaxSessions       = 32
	DefaultMaxStreams        = 32
	DefaultStreamsPerSession = 4
	DefaultHeartbeat         = 15 * time.Second
)

// maxActor bounds the admin identity a login carries: it is shown on
// every page and written to the audit log.
const maxActor = 256

// Config configures a Console. Only Backend is required; every zero knob
// takes its default.
type Config struct {
	Backend Backend
	// Now is the clock of tokens and sessions; nil is time.Now.
	Now func() time.Time
	// Log receives what the operator is not shown (backend failures,
	// logins); nil discards. Tokens and session ids never reach it.
	Log *slog.Logger

	// LoginTTL is how long a minted login URL stays good (DefaultLoginTTL).
	LoginTTL time.Duration
	// IdleTimeout ends a session nobody used for that long
	// (DefaultIdleTimeout); SessionLifetime ends any session that old
	// (DefaultSessionLifetime).
	IdleTimeout, SessionLifetime time.Duration
	// MaxLogins and MaxSessions cap the unused login tokens and the live
	// sessions held; past the cap the oldest is dropped
	// (DefaultMaxLogins, DefaultMaxSessions).
	MaxLogins, MaxSessions int
	// MaxStreams caps the open live-update streams in all, and
	// StreamsPerSession those of one session (DefaultMaxStreams,
	// DefaultStreamsPerSession); one more is refused with 429.
	MaxStreams, StreamsPerSession int
	// Caller names the admin identity that authenticated a request's
	// connection, in the form MintLogin is given (meshd: the admin
	// middleware's store.Actor). When set, a login is redeemed and a
	// session used only by requests whose Caller is the actor it was
	// minted for, so a session cookie carried to another admin's channel
	// acts for nobody, and an admin whose credential is revoked (meshd
	// then refuses its connections) keeps no console. Nil checks nothing.
	Caller func(*http.Request) string
	// Heartbeat is the pause between two keep-alive comments on a live
	// stream, at which it also notices that its session ended
	// (DefaultHeartbeat).
	Heartbeat time.Duration
}

// Console is the operator console: its sessions and its handler. It is
// safe for concurrent use.
type Console struct {
	backend Backend
	now     func() time.Time
	log     *slog.Logger
	cfg     Config
	store   *store
	pages   *pageSet
}

// New returns a console over cfg.Backend.
func New(cfg Config) (*Console, error) {
	if cfg.Backend == nil {
		return nil, errors.New("console: Config.Backend is nil")
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"LoginTTL", &cfg.LoginTTL, DefaultLoginTTL},
		{"IdleTimeout", &cfg.IdleTimeout, DefaultIdleTimeout},
		{"SessionLifetime", &cfg.SessionLifetime, DefaultSessionLifetime},
		{"Heartbeat", &cfg.Heartbeat, DefaultHeartbeat},
	} {
		if *d.v < 0 {
			return nil, fmt.Errorf("console: Config.%s is negative (%s)", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	for _, n := range []struct {
		name string
		v    *int
		def  int
	}{
		{"MaxLogins", &cfg.MaxLogins, DefaultMaxLogins},
		{"MaxSessions", &cfg.MaxSessions, DefaultMaxSessions},
		{"MaxStreams", &cfg.MaxStreams, DefaultMaxStreams},
		{"StreamsPerSession", &cfg.StreamsPerSession, DefaultStreamsPerSession},
	} {
		if *n.v < 0 {
			return nil, fmt.Errorf("console: Config.%s is negative (%d)", n.name, *n.v)
		}
		if *n.v == 0 {
			*n.v = n.def
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	c := &Console{backend: cfg.Backend, now: cfg.Now, log: cfg.Log, cfg: cfg, pages: pages}
	c.store = newStore(cfg)
	return c, nil
}

// MintLogin returns a one-time login for the admin identity actor: its
// Path, visited once before ExpiresAt, opens a session acting as actor.
//
// actor is vouched for by the caller alone (meshd's admin API, after the
// meshd-admin policy admitted the peer: "uid 0 (admin socket)",
// "alice.mesh"); the console never compares it, it shows it and passes it
// verbatim to the Backend as the audit's actor.
func (c *Console) MintLogin(actor string) (meshapi.ConsoleLogin, error) {
	if err := checkActor(actor); err != nil {
		return meshapi.ConsoleLogin{}, err
	}
	token, expires, err := c.store.mint(actor)
	if err != nil {
		return meshapi.ConsoleLogin{}, err
	}
	return meshapi.ConsoleLogin{Path: pathLogin + "?token=" + token, ExpiresAt: expires}, nil
}

func checkActor(actor string) error {
	switch {
	case actor == "":
		return errors.New("console: a login needs the admin identity it acts as")
	case len(actor) > maxActor:
		return fmt.Errorf("console: the admin identity is longer than %d bytes", maxActor)
	case !utf8.ValidString(actor):
		return errors.New("console: the admin identity is not UTF-8")
	case strings.IndexFunc(actor, unicode.IsControl) >= 0:
		return errors.New("console: the admin identity holds a control character")
	}
	return nil
}

// Paths under meshapi.PathConsole.
const (
	pathLogin         = meshapi.PathConsole + "login"
	pathLogout        = meshapi.PathConsole + "logout"
	pathEvents        = meshapi.PathConsole + "events"
	pathStatic        = meshapi.PathConsole + "static/"
	pathAgents        = meshapi.PathConsole + "agents"
	pathNodes         = meshapi.PathConsole + "nodes"
	pathCertificates  = meshapi.PathConsole + "certificates"
	pathRevocations   = meshapi.PathConsole + "revocations"
	pathEntities      = meshapi.PathConsole + "entities"
	pathAudit         = meshapi.PathConsole + "audit"
	pathIntermediates = meshapi.PathConsole + "intermediates"
	pathPolicy        = meshapi.PathConsole + "policy"
	pathRevoke        = meshapi.PathConsole + "revoke"
	pathReinstate     = meshapi.PathConsole + "reinstate"
	pathRevokeEntity  = meshapi.PathConsole + "entities/revoke"
)

// Handler serves every path under meshapi.PathConsole, to be mounted as
// is on the admin surface (never the agent port). The login page is the
// only one answered without a session; the static script and style sheet
// (the same bytes for everyone) are the only other.
//
// Its cross-site checks compare a POST's Origin with the request's Host:
// a proxy in front (meshctl console) must pass the browser's Host on, as
// httputil.ReverseProxy's Director does.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+pathLogin, c.login) // HEAD too: refused inside, it would spend the token
	mux.Handle("GET "+pathStatic, staticHandler())
	mux.HandleFunc("GET "+pathEvents, c.withSession(c.events, false))
	mux.HandleFunc("POST "+pathLogout, c.withSession(c.post(c.logout), true))

	mux.HandleFunc("GET "+meshapi.PathConsole+"{$}", c.withSession(c.agentsPage, true))
	mux.HandleFunc("GET "+pathAgents, c.withSession(c.agentsPage, true))
	mux.HandleFunc("GET "+pathNodes, c.withSession(c.nodesPage, true))
	mux.HandleFunc("GET "+pathCertificates, c.withSession(c.certificatesPage, true))
	mux.HandleFunc("GET "+pathRevocations, c.withSession(c.revocationsPage, true))
	mux.HandleFunc("GET "+pathEntities, c.withSession(c.entitiesPage, true))
	mux.HandleFunc("GET "+pathAudit, c.withSession(c.auditPage, true))
	mux.HandleFunc("GET "+pathIntermediates, c.withSession(c.intermediatesPage, true))
	mux.HandleFunc("GET "+pathPolicy, c.withSession(c.policyPage, true))

	mux.HandleFunc("GET "+pathRevoke, c.withSession(c.revokeForm, true))
	mux.HandleFunc("POST "+pathRevoke, c.withSession(c.post(c.revoke), true))
	mux.HandleFunc("GET "+pathReinstate, c.withSession(c.reinstateForm, true))
	mux.HandleFunc("POST "+pathReinstate, c.withSession(c.post(c.reinstate), true))
	mux.HandleFunc("GET "+pathRevokeEntity, c.withSession(c.revokeEntityForm, true))
	mux.HandleFunc("POST "+pathRevokeEntity, c.withSession(c.post(c.revokeEntity), true))

	mux.HandleFunc(meshapi.PathConsole, c.withSession(c.notFound, true))
	return securityHeaders(mux)
}

// securityHeaders sets, on every answer, the headers that keep the
// console's pages to themselves: no script, style or connection but the
// console's own, no framing, no referrer (the login URL carries a token),
// nothing cached.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		next.ServeHTTP(w, r)
	})
}
