package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
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

// MarshalKey encodes key as a PKCS #8 "PRIVATE KEY" PEM block.
func MarshalKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey decodes a PEM private key in PKCS #8, PKCS #1 or SEC 1 form.
func ParseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found (want a PRIVATE KEY)")
	}
	var (
		k   any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, want PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", k)
	}
	return s, nil
}

// ReadKeyFile reads a private key file, refusing one that other users can
// read or write: a CA key with loose permissions is treated as exposed.
func ReadKeyFile(path string) (crypto.Signer, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", ErrKeyMissing, path)
	}
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; run `chmod 600 %s` if it was never exposed, else treat the key as compromised", ErrKeyPermissions, path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := ParseKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

// WriteKeyFile writes key to path with mode 0600, atomically.
func WriteKeyFile(path string, key crypto.Signer) error {
	data, err := MarshalKey(key)
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, data, 0o600)
}

// publicKeyEqual reports whether a and b are the same public key.
func publicKeyEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}
