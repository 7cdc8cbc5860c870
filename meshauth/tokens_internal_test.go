package meshauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/trust"
)

// tokenFixture is a Sessions, a certificate its tokens are bound to, and
// a token of it, for the token tests and fuzz targets of this file.
type tokenFixture struct {
	s    *Sessions
	leaf *x509.Certificate
	now  time.Time
	tok  string
}

func newTokenFixture(t testing.TB) *tokenFixture {
	t.Helper()
	now := time.Now()
	s, err := OpenSessions(SessionsConfig{Dir: t.TempDir(), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "opus@ct111"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := s.Mint(&Caller{Name: "opus@ct111", Peer: &trust.Peer{Leaf: leaf}})
	if err != nil {
		t.Fatal(err)
	}
	return &tokenFixture{s: s, leaf: leaf, now: now, tok: tok}
}

// sign signs claims with the current session key under header typ.
func (f *tokenFixture) sign(t testing.TB, typ string, claims any) string {
	t.Helper()
	k := f.s.current
	return pkitest.SignJWT(t, k.priv, k.id, typ, claims)
}

func (f *tokenFixture) claims(iss string, aud ...string) tokenClaims {
	return tokenClaims{
		Claims: jwt.Claims{Issuer: iss, Audience: aud, Subject: "opus@ct111", IssuedAt: jwt.NewNumericDate(f.now),
			NotBefore: jwt.NewNumericDate(f.now.Add(-time.Minute)), Expiry: jwt.NewNumericDate(f.now.Add(time.Minute))},
		SessionID: "s1", Confirm: confirmation{X5tS256: Thumbprint(f.leaf.Raw)},
	}
}

var defaultExpect = tokenExpect{issuer: DefaultSessionIssuer, audience: DefaultSessionAudience}

// TestVerifyTokenTypeIssuerAudience: a token signed by an accepted key
// is a session only with the session type, the issuer the verifier
// trusts, and the verifier's audience among its own.
func TestVerifyTokenTypeIssuerAudience(t *testing.T) {
	f := newTokenFixture(t)
	if _, _, err := verifyToken(f.s, f.tok, f.now, defaultExpect); err != nil {
		t.Fatalf("a minted token: %v", err)
	}
	ok := f.claims(DefaultSessionIssuer, "billing", DefaultSessionAudience)
	for _, tc := range []struct {
		name   string
		tok    string
		want   tokenExpect
		reason string // "" accepted
	}{
		{"session type, one of two audiences", f.sign(t, SessionTokenType, ok), defaultExpect, ""},
		{"application/ type, any case", f.sign(t, "Application/Mesh-Session+JWT", ok), defaultExpect, ""},
		{"the other audience", f.sign(t, SessionTokenType, ok), tokenExpect{DefaultSessionIssuer, "billing"}, ""},
		{"typ JWT", f.sign(t, "JWT", ok), defaultExpect, ReasonTokenInvalid},
		{"typ at+jwt", f.sign(t, "at+jwt", ok), defaultExpect, ReasonTokenInvalid},
		{"no typ", f.sign(t, "", ok), defaultExpect, ReasonTokenInvalid},
		{"another issuer", f.sign(t, SessionTokenType, f.claims("evil", DefaultSessionAudience)), defaultExpect, ReasonTokenInvalid},
		{"another issuer expected", f.sign(t, SessionTokenType, ok), tokenExpect{"https://meshd.example", DefaultSessionAudience}, ReasonTokenInvalid},
		{"another audience", f.sign(t, SessionTokenType, f.claims(DefaultSessionIssuer, "billing")), defaultExpect, ReasonTokenAudience},
		{"no audience", f.sign(t, SessionTokenType, f.claims(DefaultSessionIssuer)), defaultExpect, ReasonTokenAudience},
		{"a minted token, another audience expected", f.tok, tokenExpect{DefaultSessionIssuer, "billing"}, ReasonTokenAudience},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := verifyToken(f.s, tc.tok, f.now, tc.want)
			var rf *refusal
			switch {
			case tc.reason == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.reason != "" && (!errors.As(err, &rf) || rf.reason != tc.reason):
				t.Fatalf("got %v, want a %s refusal", err, tc.reason)
			}
		})
	}
}

// TestSessionsConfigAudience: meshd's tokens carry its issuer and every
// audience it was given; an empty audience is a configuration error.
func TestSessionsConfigAudience(t *testing.T) {
	if _, err := OpenSessions(SessionsConfig{Dir: t.TempDir(), Audience: []string{"mesh", ""}}); err == nil {
		t.Fatal("an empty audience was accepted")
	}
	s, err := OpenSessions(SessionsConfig{Dir: t.TempDir(), Issuer: "https://meshd.example:8000", Audience: []string{"billing", "search"}})
	if err != nil {
		t.Fatal(err)
	}
	f := newTokenFixture(t)
	tok, _, err := s.Mint(&Caller{Name: "opus@ct111", Peer: &trust.Peer{Leaf: f.leaf}})
	if err != nil {
		t.Fatal(err)
	}
	for _, aud := range []string{"billing", "search"} {
		if _, _, err := verifyToken(s, tok, time.Now(), tokenExpect{"https://meshd.example:8000", aud}); err != nil {
			t.Errorf("audience %s: %v", aud, err)
		}
	}
	if _, _, err := verifyToken(s, tok, time.Now(), defaultExpect); err == nil {
		t.Error("a token of issuer https://meshd.example:8000 for billing, search accepted as meshd's for mesh")
	}
}

// TestOwnSessionsExpectation: a service verifying its own Sessions'
// tokens (examples/mcp-server, issuer "mcp-server") accepts them without
// repeating the issuer; one verifying from a JWKS expects meshd's
// defaults; explicit settings win.
func TestOwnSessionsExpectation(t *testing.T) {
	s, err := OpenSessions(SessionsConfig{Dir: t.TempDir(), Issuer: "mcp-server", Audience: []string{"tools", "other"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  Config
		want tokenExpect
	}{
		{Config{Tokens: s}, tokenExpect{"mcp-server", "tools"}},
		{Config{Tokens: s, TokenAudience: "other"}, tokenExpect{"mcp-server", "other"}},
		{Config{Tokens: &KeySet{}}, defaultExpect},
		{Config{Tokens: &KeySet{}, TokenIssuer: "https://meshd.example"}, tokenExpect{"https://meshd.example", DefaultSessionAudience}},
	} {
		if got := tc.cfg.expect(); got != tc.want {
			t.Errorf("%T issuer %q audience %q: expects %+v, want %+v", tc.cfg.Tokens, tc.cfg.TokenIssuer, tc.cfg.TokenAudience, got, tc.want)
		}
	}
	f := newTokenFixture(t)
	tok, _, err := s.Mint(&Caller{Name: "opus@ct111", Peer: &trust.Peer{Leaf: f.leaf}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := verifyToken(s, tok, time.Now(), (&Config{Tokens: s}).expect()); err != nil {
		t.Errorf("its own token: %v", err)
	}
}

// FuzzVerifyToken: whatever the bearer, verification neither panics nor
// accepts a token that is not a typed, issued, audienced, bound session
// token signed by an accepted key.
func FuzzVerifyToken(f *testing.F) {
	fx := newTokenFixture(f)
	f.Add(fx.tok)
	f.Add(fx.sign(f, "JWT", fx.claims(DefaultSessionIssuer, DefaultSessionAudience)))
	f.Add(fx.sign(f, SessionTokenType, fx.claims(DefaultSessionIssuer, "billing")))
	parts := strings.Split(fx.tok, ".")
	f.Add(parts[0] + "." + parts[1] + ".")
	f.Add(parts[0] + ".e30." + parts[2])
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, token string) {
		s, claims, err := verifyToken(fx.s, token, fx.now, defaultExpect)
		if err != nil {
			var rf *refusal
			if !errors.As(err, &rf) || rf.code != 401 || rf.reason == "" {
				t.Fatalf("an error that is not a 401 refusal: %#v", err)
			}
			return
		}
		if s == nil || claims == nil || claims.Issuer != DefaultSessionIssuer || !claims.Audience.Contains(DefaultSessionAudience) ||
			claims.Expiry == nil || claims.SessionID == "" || claims.Confirm.X5tS256 == "" || s.KeyID != fx.s.current.id {
			t.Fatalf("accepted an incomplete token %q: %+v %+v", token, s, claims)
		}
		tok, err := jwt.ParseSigned(token, tokenAlgs)
		if err != nil || !sessionTyped(tok.Headers[0]) {
			t.Fatalf("accepted a token that is not a typed JWS: %q", token)
		}
	})
}

// FuzzParseJWKS: any document either yields a set of P-256 keys with ids
// or an error, and a failed Update leaves a set as it was.
func FuzzParseJWKS(f *testing.F) {
	fx := newTokenFixture(f)
	good, err := json.Marshal(fx.s.JWKS())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-384","kid":"x","x":"AA","y":"AA"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Add([]byte(`[]`))
	kid := fx.s.current.id
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, err := ParseJWKS(data)
		if err == nil {
			ks.mu.RLock()
			n := len(ks.keys)
			for id, k := range ks.keys {
				pub, ok := k.(*ecdsa.PublicKey)
				if id == "" || !ok || pub.Curve != elliptic.P256() {
					t.Fatalf("kept key %q: %T", id, k)
				}
			}
			ks.mu.RUnlock()
			if n == 0 {
				t.Fatal("a set without keys was accepted")
			}
		}
		known, err := ParseJWKS(good)
		if err != nil {
			t.Fatal(err)
		}
		if known.Update(data) != nil {
			if _, ok := known.VerificationKey(kid, fx.now); !ok {
				t.Fatal("a failed Update changed the set")
			}
		}
	})
}
