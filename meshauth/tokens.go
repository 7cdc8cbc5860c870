package meshauth

import (
	"cmp"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/meshtrust/meshtrust/pemfile"
)

// TokenKeys knows the public keys session tokens are verified with.
// Sessions (the issuer's own keys) and KeySet (keys read from the
// issuer's JWKS) implement it.
type TokenKeys interface {
	// VerificationKey returns the public key whose id is kid, if tokens
	// signed by it are accepted at now.
	VerificationKey(kid string, now time.Time) (crypto.PublicKey, bool)
}

// tokenClaims are a session token's claims: RFC 7519's, the session id,
// and the RFC 8705 confirmation of the client certificate it is bound to.
type tokenClaims struct {
	jwt.Claims
	SessionID string       `json:"sid"`
	Entity    string       `json:"ent,omitempty"`
	Confirm   confirmation `json:"cnf"`
}

type confirmation struct {
	// X5tS256 is the base64url SHA-256 of the bound certificate's DER.
	X5tS256 string `json:"x5t#S256"`
}

// Thumbprint returns a certificate's RFC 8705 x5t#S256 thumbprint: the
// unpadded base64url SHA-256 of its DER.
func Thumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

var tokenAlgs = []jose.SignatureAlgorithm{jose.ES256}

// SessionTokenType is a session token's JWT "typ" header (explicit
// typing, RFC 8725 section 3.11): a JWT of any other type, such as an
// ID token or another issuer's access token signed by a key the verifier
// also trusts, is never taken for a session, whatever its claims say.
const SessionTokenType = "mesh-session+jwt"

// The defaults of a session token's issuer and audience, on both sides:
// SessionsConfig (what meshd mints) and Config (what a service accepts).
const (
	// DefaultSessionIssuer is the iss of meshd's session tokens unless
	// --session-issuer names it (meshd's URL, say).
	DefaultSessionIssuer = "meshd"
	// DefaultSessionAudience is the aud of meshd's session tokens unless
	// --session-audience lists others: every service of the mesh.
	DefaultSessionAudience = "mesh"
)

// ReasonTokenAudience refuses a session token minted for another
// audience than the verifier's.
const ReasonTokenAudience = "token_wrong_audience"

// tokenExpect is what a verifier requires of a token beyond its
// signature: its issuer, and an audience it must list.
type tokenExpect struct {
	issuer, audience string
}

// expect returns what cfg's verifier requires of a session token. A
// service that verifies the tokens of its own Sessions expects, unless
// told otherwise, that Sessions' issuer and first audience.
func (cfg *Config) expect() tokenExpect {
	want := tokenExpect{issuer: cfg.TokenIssuer, audience: cfg.TokenAudience}
	if s, ok := cfg.Tokens.(*Sessions); ok && s != nil {
		want.issuer = cmp.Or(want.issuer, s.cfg.Issuer)
		want.audience = cmp.Or(want.audience, s.cfg.Audience[0])
	}
	want.issuer = cmp.Or(want.issuer, DefaultSessionIssuer)
	want.audience = cmp.Or(want.audience, DefaultSessionAudience)
	return want
}

// sessionTyped reports whether a JWS header's typ is SessionTokenType,
// compared as RFC 7515 section 4.1.9 says: case-insensitively, with an
// optional "application/" prefix.
func sessionTyped(h jose.Header) bool {
	typ, _ := h.ExtraHeaders[jose.HeaderType].(string)
	typ = strings.ToLower(typ)
	return strings.TrimPrefix(typ, "application/") == SessionTokenType
}

// session verifies bearer as a session token of caller's certificate and
// returns the caller with its Session.
func (a *Auth) session(caller *Caller, bearer string) (*Caller, *refusal) {
	s, claims, err := verifyToken(a.cfg.Tokens, bearer, a.cfg.Now(), a.cfg.expect())
	if err != nil {
		var rf *refusal
		errors.As(err, &rf)
		return nil, rf
	}
	if subtle.ConstantTimeCompare([]byte(claims.Confirm.X5tS256), []byte(Thumbprint(caller.Peer.Leaf.Raw))) != 1 {
		return nil, unauthenticated(ReasonTokenBinding, "the session token is bound to another client certificate; attach a session with this one (POST /session/attach)")
	}
	if claims.Subject != caller.Name {
		return nil, unauthenticated(ReasonTokenBinding, "the session token was issued to %q, not to %q", claims.Subject, caller.Name)
	}
	out := *caller
	out.Session = s
	return &out, nil
}

// tokenKeyAccepted reports whether the key kid still verifies tokens.
func (a *Auth) tokenKeyAccepted(kid string) bool {
	_, ok := a.cfg.Tokens.VerificationKey(kid, a.cfg.Now())
	return ok
}

// verifyToken checks a token's type, its signature against keys, its
// issuer and audience against want, and its validity window at now.
func verifyToken(keys TokenKeys, token string, now time.Time, want tokenExpect) (*Session, *tokenClaims, error) {
	tok, err := jwt.ParseSigned(token, tokenAlgs)
	if err != nil || len(tok.Headers) != 1 {
		return nil, nil, unauthenticated(ReasonTokenInvalid, "the session token is not a signed ES256 JWT; attach a session again")
	}
	if !sessionTyped(tok.Headers[0]) {
		return nil, nil, unauthenticated(ReasonTokenInvalid, "the bearer token is not a session token (JWT typ %q, want %q); attach a session (POST /session/attach)", tok.Headers[0].ExtraHeaders[jose.HeaderType], SessionTokenType)
	}
	kid := tok.Headers[0].KeyID
	key, ok := keys.VerificationKey(kid, now)
	if !ok {
		return nil, nil, unauthenticated(ReasonTokenInvalid, "the session token was signed by key %q, which is not (or no longer) accepted; attach a session again", kid)
	}
	var claims tokenClaims
	if err := tok.Claims(key, &claims); err != nil {
		return nil, nil, unauthenticated(ReasonTokenInvalid, "the session token's signature does not verify; attach a session again")
	}
	// iss and aud are compared as exact strings: the issuer this service
	// was configured to trust (one meshd deployment) and this service's
	// own audience, which the token must list.
	if err := claims.ValidateWithLeeway(jwt.Expected{Issuer: want.issuer, AnyAudience: jwt.Audience{want.audience}, Time: now}, 0); err != nil {
		switch {
		case errors.Is(err, jwt.ErrInvalidIssuer):
			return nil, nil, unauthenticated(ReasonTokenInvalid, "the session token was issued by %q, not by %q, the issuer this service trusts", claims.Issuer, want.issuer)
		case errors.Is(err, jwt.ErrInvalidAudience):
			return nil, nil, unauthenticated(ReasonTokenAudience, "the session token is for audience %q, not for %q; attach a session for this service's audience", []string(claims.Audience), want.audience)
		}
		if errors.Is(err, jwt.ErrExpired) {
			return nil, nil, unauthenticated(ReasonTokenExpired, "the session token expired at %s; attach a session again", claims.Expiry.Time().UTC().Format(time.RFC3339))
		}
		return nil, nil, unauthenticated(ReasonTokenInvalid, "the session token is not valid yet or has a bad validity window; attach a session again")
	}
	if claims.Expiry == nil || claims.SessionID == "" || claims.Confirm.X5tS256 == "" {
		return nil, nil, unauthenticated(ReasonTokenInvalid, "the session token lacks an expiry, a session id or a certificate binding")
	}
	return &Session{ID: claims.SessionID, Expires: claims.Expiry.Time(), KeyID: kid}, &claims, nil
}

// SessionsConfig configures Sessions.
type SessionsConfig struct {
	// Dir holds the signing keys (0700, keys 0600). Required.
	Dir string
	// TTL is a token's lifetime; default 15 minutes, at most 24 hours.
	// A rotated-out key stays accepted for one TTL, so that no token
	// outlives the key that verifies it.
	TTL time.Duration
	// Issuer is the tokens' iss claim, the name verifiers trust this
	// issuer by (Config.TokenIssuer); default DefaultSessionIssuer.
	Issuer string
	// Audience is the tokens' aud claim, the services they are for; a
	// verifier accepts a token that lists its Config.TokenAudience.
	// Default [DefaultSessionAudience].
	Audience []string
	Now      func() time.Time
	// Rand is the source of keys and session ids; default crypto/rand.
	Rand io.Reader
}

// Sessions mints certificate-bound session tokens and knows the keys that
// verify them: the current signing key and, for one token lifetime after
// a rotation, the previous one. Both persist in Dir.
//
// mu guards the keys and keys.json (Rotate and Drop write it under mu);
// signing happens outside it on a copy.
type Sessions struct {
	cfg SessionsConfig

	mu       sync.RWMutex
	current  *signingKey
	previous *signingKey // nil, or accepted until previousUntil
	until    time.Time
}

type signingKey struct {
	id   string
	priv *ecdsa.PrivateKey
}

// keyState is Dir/keys.json: which key files are which.
type keyState struct {
	Current       string    `json:"current"`
	Previous      string    `json:"previous,omitempty"`
	PreviousUntil time.Time `json:"previous_until,omitzero"`
}

// Session token lifetimes.
const (
	DefaultSessionTTL = 15 * time.Minute
	MaxSessionTTL     = 24 * time.Hour
)

// OpenSessions loads the signing keys from cfg.Dir, creating the first
// one if there is none.
func OpenSessions(cfg SessionsConfig) (*Sessions, error) {
	if cfg.Dir == "" {
		return nil, errors.New("meshauth: SessionsConfig.Dir is required")
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultSessionTTL
	}
	if cfg.TTL < 0 || cfg.TTL > MaxSessionTTL {
		return nil, fmt.Errorf("meshauth: session TTL %s: want at most %s", cfg.TTL, MaxSessionTTL)
	}
	if cfg.Issuer == "" {
		cfg.Issuer = DefaultSessionIssuer
	}
	if len(cfg.Audience) == 0 {
		cfg.Audience = []string{DefaultSessionAudience}
	}
	for _, a := range cfg.Audience {
		if a == "" {
			return nil, errors.New("meshauth: a session token audience is empty")
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if err := pemfile.MkdirPrivate(cfg.Dir); err != nil {
		return nil, fmt.Errorf("session keys: %w", err)
	}
	s := &Sessions{cfg: cfg}
	data, err := os.ReadFile(s.statePath())
	if errors.Is(err, os.ErrNotExist) {
		k, err := s.newKey()
		if err != nil {
			return nil, err
		}
		if err := s.writeState(keyState{Current: k.id}); err != nil {
			return nil, err
		}
		s.current = k
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("session keys: %w", err)
	}
	var st keyState
	if err := json.Unmarshal(data, &st); err != nil || st.Current == "" {
		return nil, fmt.Errorf("session keys: %s is damaged (%v); move the directory aside to start with new keys (every session ends)", s.statePath(), err)
	}
	if s.current, err = s.readKey(st.Current); err != nil {
		return nil, err
	}
	if st.Previous != "" && cfg.Now().Before(st.PreviousUntil) {
		if s.previous, err = s.readKey(st.Previous); err != nil {
			return nil, err
		}
		s.until = st.PreviousUntil
	}
	return s, nil
}

func (s *Sessions) statePath() string { return filepath.Join(s.cfg.Dir, "keys.json") }

func (s *Sessions) keyPath(id string) string { return filepath.Join(s.cfg.Dir, id+".key") }

// newKey generates a P-256 key and writes it to Dir.
func (s *Sessions) newKey() (*signingKey, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), s.cfg.Rand)
	if err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	jwk := jose.JSONWebKey{Key: priv.Public()}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	k := &signingKey{id: base64.RawURLEncoding.EncodeToString(tp), priv: priv}
	if err := pemfile.WriteKey(s.keyPath(k.id), priv); err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	return k, nil
}

func (s *Sessions) readKey(id string) (*signingKey, error) {
	key, err := pemfile.ReadKey(s.keyPath(id))
	if err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	priv, ok := key.(*ecdsa.PrivateKey)
	if !ok || priv.Curve != elliptic.P256() {
		return nil, fmt.Errorf("session key %s is not a P-256 key", s.keyPath(id))
	}
	return &signingKey{id: id, priv: priv}, nil
}

func (s *Sessions) writeState(st keyState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := pemfile.WriteAtomic(s.statePath(), data, 0o600); err != nil {
		return fmt.Errorf("session keys: %w", err)
	}
	return nil
}

// Rotate makes a new signing key current. The previous current key stays
// accepted for one token lifetime, so tokens it signed live out their
// time; the key before it is deleted. The rotation is on disk before it
// takes effect.
func (s *Sessions) Rotate() (kid string, err error) {
	k, err := s.newKey()
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, dropped := s.current, s.previous
	until := s.cfg.Now().Add(s.cfg.TTL)
	if err := s.writeState(keyState{Current: k.id, Previous: old.id, PreviousUntil: until}); err != nil {
		os.Remove(s.keyPath(k.id))
		return "", err
	}
	s.current, s.previous, s.until = k, old, until
	if dropped != nil && dropped.id != k.id {
		os.Remove(s.keyPath(dropped.id))
	}
	return k.id, nil
}

// Errors of Sessions.Drop, for callers to branch on.
var (
	// ErrKeyCurrent refuses to drop the current signing key: rotate
	// first, then drop the key the rotation retired.
	ErrKeyCurrent = errors.New("meshauth: the current session signing key cannot be dropped; rotate first, then drop the retired key")
	// ErrKeyUnknown is a key id that is not a rotated-out key still
	// accepted (never one, already dropped, or its overlap ended).
	ErrKeyUnknown = errors.New("meshauth: no rotated-out session signing key has that id")
)

// KeyInfo describes a session signing key whose tokens are accepted.
type KeyInfo struct {
	ID string
	// Current is the key new tokens are signed with; the other is the
	// rotated-out key, accepted until Until unless dropped.
	Current bool
	Until   time.Time
}

// Keys returns the keys whose tokens are accepted now, the current one
// first.
func (s *Sessions) Keys() []KeyInfo {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := []KeyInfo{{ID: s.current.id, Current: true}}
	if s.previous != nil && s.cfg.Now().Before(s.until) {
		out = append(out, KeyInfo{ID: s.previous.id, Until: s.until})
	}
	return out
}

// Drop ends the rotated-out key kid's overlap at once, for a key an
// operator no longer trusts: from its return VerificationKey refuses
// the tokens it signed, JWKS no longer lists it (verifiers holding a
// KeySet refuse them once they Update), and the key file is deleted.
// The change is on disk before it takes effect. It returns ErrKeyCurrent
// for the current key and ErrKeyUnknown for any other id.
func (s *Sessions) Drop(kid string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if kid == s.current.id {
		return ErrKeyCurrent
	}
	if s.previous == nil || s.previous.id != kid || !s.cfg.Now().Before(s.until) {
		return ErrKeyUnknown
	}
	if err := s.writeState(keyState{Current: s.current.id}); err != nil {
		return err
	}
	s.previous, s.until = nil, time.Time{}
	if err := os.Remove(s.keyPath(kid)); err != nil && !errors.Is(err, os.ErrNotExist) {
		// Not accepted any more (keys.json no longer names it); only the
		// file is left behind.
		return fmt.Errorf("session key %s dropped, but its file stays: %w", kid, err)
	}
	return nil
}

// Mint returns a token for caller's certificate, with a new session id.
// It refuses a caller without a certificate.
func (s *Sessions) Mint(caller *Caller) (string, *Session, error) {
	if caller == nil || caller.Peer == nil {
		return "", nil, errors.New("meshauth: a session is bound to a client certificate; this caller has none")
	}
	var raw [16]byte
	if _, err := io.ReadFull(s.cfg.Rand, raw[:]); err != nil {
		return "", nil, fmt.Errorf("session id: %w", err)
	}
	s.mu.RLock()
	k := s.current
	s.mu.RUnlock()
	now := s.cfg.Now()
	exp := now.Add(s.cfg.TTL)
	claims := tokenClaims{
		Claims: jwt.Claims{Issuer: s.cfg.Issuer, Audience: jwt.Audience(s.cfg.Audience), Subject: caller.Name, IssuedAt: jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)), Expiry: jwt.NewNumericDate(exp)},
		SessionID: hex.EncodeToString(raw[:]),
		Entity:    caller.Entity,
		Confirm:   confirmation{X5tS256: Thumbprint(caller.Peer.Leaf.Raw)},
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: k.priv, KeyID: k.id}},
		(&jose.SignerOptions{}).WithType(SessionTokenType))
	if err != nil {
		return "", nil, fmt.Errorf("session token: %w", err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return "", nil, fmt.Errorf("session token: %w", err)
	}
	return tok, &Session{ID: claims.SessionID, Expires: jwt.NewNumericDate(exp).Time(), KeyID: k.id}, nil
}

// VerificationKey implements TokenKeys: the current key, and the
// previous one until its overlap ends.
func (s *Sessions) VerificationKey(kid string, now time.Time) (crypto.PublicKey, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.current.id == kid {
		return s.current.priv.Public(), true
	}
	if s.previous != nil && s.previous.id == kid && now.Before(s.until) {
		return s.previous.priv.Public(), true
	}
	return nil, false
}

// JWKS returns the public keys that verify tokens now, as a JSON Web Key
// Set, for services that verify tokens without calling the issuer.
func (s *Sessions) JWKS() jose.JSONWebKeySet {
	s.mu.RLock()
	defer s.mu.RUnlock()
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{publicJWK(s.current)}}
	if s.previous != nil && s.cfg.Now().Before(s.until) {
		set.Keys = append(set.Keys, publicJWK(s.previous))
	}
	return set
}

func publicJWK(k *signingKey) jose.JSONWebKey {
	return jose.JSONWebKey{Key: k.priv.Public(), KeyID: k.id, Algorithm: string(jose.ES256), Use: "sig"}
}

// KeySet is a set of token verification keys read from an issuer's JWKS
// (meshd's GET /session/jwks). Replace it with Update when the issuer
// rotates; it is safe for concurrent use.
type KeySet struct {
	mu   sync.RWMutex
	keys map[string]crypto.PublicKey
}

// ParseJWKS reads a JWKS document. Only ES256 signature keys are kept.
func ParseJWKS(data []byte) (*KeySet, error) {
	ks := &KeySet{}
	return ks, ks.Update(data)
}

// Update replaces the set's keys with those of a JWKS document; on error
// the set is unchanged.
func (ks *KeySet) Update(data []byte) error {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return fmt.Errorf("meshauth: JWKS: %w", err)
	}
	keys := make(map[string]crypto.PublicKey)
	for _, k := range set.Keys {
		pub, ok := k.Key.(*ecdsa.PublicKey)
		if !ok || k.KeyID == "" || pub.Curve != elliptic.P256() || (k.Algorithm != "" && k.Algorithm != string(jose.ES256)) {
			continue
		}
		keys[k.KeyID] = pub
	}
	if len(keys) == 0 {
		return errors.New("meshauth: JWKS holds no ES256 key with a key id")
	}
	ks.mu.Lock()
	ks.keys = keys
	ks.mu.Unlock()
	return nil
}

// VerificationKey implements TokenKeys.
func (ks *KeySet) VerificationKey(kid string, _ time.Time) (crypto.PublicKey, bool) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	k, ok := ks.keys[kid]
	return k, ok
}
