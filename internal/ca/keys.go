package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
	"io"

	"github.com/meshtrust/meshtrust/pemfile"
)

// KeyType names a private key algorithm the CA can generate.
type KeyType string

// The key types the CA generates. ECDSA P-256 is the default: small, fast
// and understood by every TLS stack the mesh talks to.
const (
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyECDSAP384 KeyType = "ecdsa-p384"
	KeyEd25519   KeyType = "ed25519"
	KeyRSA2048   KeyType = "rsa-2048"
	KeyRSA4096   KeyType = "rsa-4096"
)

// KeyTypes lists every supported key type, default first.
var KeyTypes = []KeyType{KeyECDSAP256, KeyECDSAP384, KeyEd25519, KeyRSA2048, KeyRSA4096}

// ParseKeyType parses a key type name; the empty string is the default.
func ParseKeyType(s string) (KeyType, error) {
	if s == "" {
		return KeyECDSAP256, nil
	}
	for _, k := range KeyTypes {
		if string(k) == s {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown key type %q (want one of ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-4096)", s)
}

// GenerateKey returns a new private key of type t read from rand.
func GenerateKey(t KeyType, rand io.Reader) (crypto.Signer, error) {
	switch t {
	case KeyECDSAP256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand)
	case KeyECDSAP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand)
	case KeyEd25519:
		_, k, err := ed25519.GenerateKey(rand)
		return k, err
	case KeyRSA2048:
		return rsa.GenerateKey(rand, 2048)
	case KeyRSA4096:
		return rsa.GenerateKey(rand, 4096)
	}
	return nil, fmt.Errorf("unknown key type %q", t)
}

// publicKeyEqual reports whether a and b are the same public key.
func publicKeyEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// The CA's own keys (the root's and every intermediate's) are named by a
// base path, the path of their file without its extension: the root's is
// <root-dir>/ca, an intermediate's <ca-dir>/intermediate/keys/<id>, the
// active one's copy <ca-dir>/intermediate/int. Every read, write and
// generation of a CA key goes through newCAKey, saveCAKey and loadCAKey,
// so where keys live (a file base+".key" today) is decided in one place.

// newCAKey generates the key of a new CA certificate (root or
// intermediate), of cfg.KeyType.
func newCAKey(cfg Config) (crypto.Signer, error) { return GenerateKey(cfg.KeyType, cfg.Rand) }

// saveCAKey records key under base so that loadCAKey(cfg, base) returns it.
func saveCAKey(cfg Config, base string, key crypto.Signer) error {
	return pemfile.WriteKey(base+".key", key)
}

// loadCAKey returns the CA key recorded under base.
func loadCAKey(cfg Config, base string) (crypto.Signer, error) {
	return pemfile.ReadKey(base + ".key")
}

// caKeyExists reports whether a CA key is recorded under base.
func caKeyExists(cfg Config, base string) bool { return pemfile.Exists(base + ".key") }
