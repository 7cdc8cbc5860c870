package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
	"io"
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
