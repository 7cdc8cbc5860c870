package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Sentinel errors of the session store, which the handlers branch on.
var (
	// errNoLogin: the login token is unknown, used or expired.
	errNoLogin = errors.New("console: login token unknown, used or expired")
	// errTooManyStreams: a session, or the console, holds its cap of live
	// streams.
	errTooManyStreams = errors.New("console: too many live streams")
)

// secretBytes is the size of every random secret the console hands out
// (login tokens, session ids, CSRF tokens): 256 bits.
const secretBytes = 32

// maxSecretText bounds a token or session id read from a request before
// it is hashed: base64url of secretBytes is 43 characters.
const maxSecretText = 64

// store holds the login tokens and the sessions. Its one lock, mu, is
// the only lock of the console and is never held while calling out (the
// Backend, a network write): there is no lock order to keep.
//
// Tokens and session ids are held only as their SHA-256, so the maps are
// keyed by a digest no timing of a lookup can teach an attacker anything
// about; the CSRF token, which the page must echo, is compared in
// constant time.
type store struct {
	cfg Config

	mu       sync.Mutex
	logins   map[[sha256.Size]byte]*login   // by SHA-256 of the token
	sessions map[[sha256.Size]byte]*session // by SHA-256 of the session id
	streams  int                            // open live streams, all sessions
	// seq numbers tokens and sessions in creation order, for the
	// drop-the-oldest caps, even when the clock does not move.
	seq uint64
}

type login struct {
	actor   string
	expires time.Time
	seq     uint64
}

// session is one logged-in browser. Its fields are guarded by store.mu,
// except those set at creation and never written again (actor, csrf,
// created, done).
type session struct {
	actor    string // the admin identity MintLogin was given
	csrf     string // base64url of secretBytes random bytes
	created  time.Time
	lastSeen time.Time
	streams  int
	// done is closed when the session ends (logout, dropped past the
	// cap); its live streams end with it. Time-outs are noticed by the
	// streams at their heartbeat.
	done  chan struct{}
	ended bool
	seq   uint64
}

// sessionView is what a handler learns of its session.
type sessionView struct {
	key   [sha256.Size]byte
	Actor string
	CSRF  string
	done  <-chan struct{}
}

func newStore(cfg Config) *store {
	return &store{
		cfg:      cfg,
		logins:   make(map[[sha256.Size]byte]*login),
		sessions: make(map[[sha256.Size]byte]*session),
	}
}

func randomSecret() (string, error) {
	b := make([]byte, secretBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("console: reading random bytes: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func digest(secret string) [sha256.Size]byte { return sha256.Sum256([]byte(secret)) }

// mint stores a new login token for actor and returns it with its expiry.
func (s *store) mint(actor string) (string, time.Time, error) {
	token, err := randomSecret()
	if err != nil {
		return "", time.Time{}, err
	}
	now := s.cfg.Now()
	l := &login{actor: actor, expires: now.Add(s.cfg.LoginTTL)}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked(now)
	for len(s.logins) >= s.cfg.MaxLogins {
		s.dropOldestLoginLocked()
	}
	l.seq = s.nextSeqLocked()
	s.logins[digest(token)] = l
	return token, l.expires, nil
}

// nextSeqLocked numbers entries in creation order.
func (s *store) nextSeqLocked() uint64 {
	s.seq++
	return s.seq
}

// redeem consumes a login token, whatever its state, and opens a session
// if it was good: it returns the new session's id. An unknown, used or
// expired token is errNoLogin and changes nothing.
func (s *store) redeem(token string) (string, sessionView, error) {
	if token == "" || len(token) > maxSecretText {
		return "", sessionView{}, errNoLogin
	}
	// Compared: the SHA-256 of the token exactly as the URL carried it
	// (base64url, no padding) with the SHA-256 of one MintLogin handed
	// out; only MintLogin, called by meshd's admin API for an admitted
	// admin, vouches for a token.
	key := digest(token)
	id, err := randomSecret()
	if err != nil {
		return "", sessionView{}, err
	}
	csrf, err := randomSecret()
	if err != nil {
		return "", sessionView{}, err
	}
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.logins[key]
	if !ok {
		return "", sessionView{}, errNoLogin
	}
	delete(s.logins, key) // single use, even when it expired
	if !now.Before(l.expires) {
		return "", sessionView{}, errNoLogin
	}
	s.sweepLocked(now)
	for len(s.sessions) >= s.cfg.MaxSessions {
		s.dropOldestSessionLocked()
	}
	ss := &session{actor: l.actor, csrf: csrf, created: now, lastSeen: now, done: make(chan struct{}), seq: s.nextSeqLocked()}
	skey := digest(id)
	s.sessions[skey] = ss
	return id, sessionView{key: skey, Actor: ss.actor, CSRF: ss.csrf, done: ss.done}, nil
}

// lookup returns the live session of id; touch marks it used (a page, an
// action), which a live stream's heartbeat does not.
func (s *store) lookup(id string, touch bool) (sessionView, bool) {
	if id == "" || len(id) > maxSecretText {
		return sessionView{}, false
	}
	// Compared: the SHA-256 of the cookie's value exactly as sent with
	// the SHA-256 of an id redeem handed out.
	key := digest(id)
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.sessions[key]
	if !ok {
		return sessionView{}, false
	}
	if s.expiredLocked(ss, now) {
		s.endLocked(key, ss)
		return sessionView{}, false
	}
	if touch {
		ss.lastSeen = now
	}
	return sessionView{key: key, Actor: ss.actor, CSRF: ss.csrf, done: ss.done}, true
}

// alive reports whether the session is still live, without touching it:
// a live stream asks at each heartbeat.
func (s *store) alive(key [sha256.Size]byte) bool {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.sessions[key]
	if !ok {
		return false
	}
	if s.expiredLocked(ss, now) {
		s.endLocked(key, ss)
		return false
	}
	return true
}

// end ends a session (logout).
func (s *store) end(key [sha256.Size]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss, ok := s.sessions[key]; ok {
		s.endLocked(key, ss)
	}
}

// openStream counts one more live stream of the session, or refuses
// past a cap (errTooManyStreams) or when the session ended (errNoLogin);
// the caller calls the closer it returns when the stream ends.
func (s *store) openStream(key [sha256.Size]byte) (func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.sessions[key]
	if !ok {
		return nil, errNoLogin
	}
	if ss.streams >= s.cfg.StreamsPerSession || s.streams >= s.cfg.MaxStreams {
		return nil, errTooManyStreams
	}
	ss.streams++
	s.streams++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			ss.streams-- // counted on the session even once it ended
			s.streams--
		})
	}, nil
}

// checkCSRF compares, in constant time, the token a form carried with
// its session's.
func checkCSRF(v sessionView, got string) bool {
	// Compared: the form's csrf field exactly as posted with the token
	// this session was given at login (base64url); only this console
	// vouches for it, through the page it rendered for the session.
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(v.CSRF)) == 1
}

func (s *store) expiredLocked(ss *session, now time.Time) bool {
	return !now.Before(ss.lastSeen.Add(s.cfg.IdleTimeout)) || !now.Before(ss.created.Add(s.cfg.SessionLifetime))
}

func (s *store) endLocked(key [sha256.Size]byte, ss *session) {
	delete(s.sessions, key)
	if !ss.ended {
		ss.ended = true
		close(ss.done)
	}
}

// sweepLocked drops expired tokens and sessions, so that what is held is
// bounded by the caps and by time alike.
func (s *store) sweepLocked(now time.Time) {
	for k, l := range s.logins {
		if !now.Before(l.expires) {
			delete(s.logins, k)
		}
	}
	for k, ss := range s.sessions {
		if s.expiredLocked(ss, now) {
			s.endLocked(k, ss)
		}
	}
}

func (s *store) dropOldestLoginLocked() {
	if k, _, ok := oldest(s.logins, func(l *login) uint64 { return l.seq }); ok {
		delete(s.logins, k)
	}
}

func (s *store) dropOldestSessionLocked() {
	if k, ss, ok := oldest(s.sessions, func(ss *session) uint64 { return ss.seq }); ok {
		s.endLocked(k, ss)
	}
}

// oldest returns the entry of m with the lowest seq; the caps keep m
// small, so a scan is cheap.
func oldest[V any](m map[[sha256.Size]byte]V, seq func(V) uint64) ([sha256.Size]byte, V, bool) {
	var (
		key   [sha256.Size]byte
		found V
		ok    bool
	)
	for k, v := range m {
		if !ok || seq(v) < seq(found) {
			key, found, ok = k, v, true
		}
	}
	return key, found, ok
}

// counts reports the tokens and sessions held (for the tests of the caps).
func (s *store) counts() (logins, sessions, streams int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.logins), len(s.sessions), s.streams
}
