package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

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
// so where keys live is decided here: a key file base+".key", or, for a
// key on a PKCS#11 token, a reference base+".pkcs11" (keyRef) naming the
// token and the key object, which never leaves the token. One base names
// one key: saving it in one form removes the other.

// newCAKey generates the key of a new CA certificate (root or
// intermediate), of cfg.KeyType: on the token cfg.PKCS11 selects when one
// is configured, else in memory (saved to a file by saveCAKey).
func newCAKey(cfg Config) (crypto.Signer, error) {
	if !cfg.PKCS11.Configured() {
		return GenerateKey(cfg.KeyType, cfg.Rand)
	}
	t, err := openToken(cfg.PKCS11)
	if err != nil {
		return nil, err
	}
	return t.generate(cfg.KeyType, cfg.Rand, "meshtrust CA "+cfg.Now().UTC().Format("2006-01-02T150405Z"))
}

// saveCAKey records key under base so that loadCAKey(cfg, base) returns it:
// a key on a token as the reference base+".pkcs11", any other as the file
// base+".key", both 0600.
func saveCAKey(cfg Config, base string, key crypto.Signer) error {
	keep, drop := base+".key", base+".pkcs11"
	var err error
	if tk, ok := key.(*tokenKey); ok {
		keep, drop = drop, keep
		err = pemfile.WriteAtomic(keep, tk.ref.marshal(), 0o600)
	} else {
		err = pemfile.WriteKey(keep, key)
	}
	if err != nil {
		return err
	}
	if err := os.Remove(drop); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s now holds the key; remove the stale %s: %w", keep, drop, err)
	}
	return nil
}

// loadCAKey returns the CA key recorded under base: the file base+".key"
// if there is one, else the key base+".pkcs11" names, from the token
// cfg.PKCS11 selects. A reference with no token configured, or naming
// another token, is an error that names the token; nothing falls back.
func loadCAKey(cfg Config, base string) (crypto.Signer, error) {
	if pemfile.Exists(base+".key") || !pemfile.Exists(base+".pkcs11") {
		return pemfile.ReadKey(base + ".key") // a missing key is reported as the file
	}
	path := base + ".pkcs11"
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ref, err := parseKeyRef(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !cfg.PKCS11.Configured() {
		return nil, fmt.Errorf("%w: %s is a key on PKCS#11 token %s; configure it (--pkcs11-module, --pkcs11-token and --pkcs11-pin-file or $MESHTRUST_PKCS11_PIN)", ErrToken, path, ref.token())
	}
	t, err := openToken(cfg.PKCS11)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	k, err := t.find(ref)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// caKeyExists reports whether a CA key is recorded under base, in either
// form.
func caKeyExists(cfg Config, base string) bool {
	return pemfile.Exists(base+".key") || pemfile.Exists(base+".pkcs11")
}
