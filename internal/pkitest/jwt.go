package pkitest

import (
	"crypto"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// SignJWT returns claims as a compact JWT signed ES256 by key (an ECDSA
// P-256 key) with header kid, and header typ unless typ is empty: a
// token a test forges to see what a verifier makes of it.
func SignJWT(tb testing.TB, key crypto.Signer, kid, typ string, claims any) string {
	tb.Helper()
	opts := &jose.SignerOptions{}
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}
