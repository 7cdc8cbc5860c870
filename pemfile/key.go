// Package pemfile reads and writes the PEM files of a mesh PKI: private
// keys (refusing files others can read), certificates, and atomic writes.
package pemfile

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// Errors callers branch on.
var (
	// ErrMissing reports a key file that is not there. An error wrapping
	// it also matches fs.ErrNotExist.
	ErrMissing = errors.New("key file missing")
	// ErrPermissions reports a key file that other users can read or
	// write, or a directory they can write.
	ErrPermissions = errors.New("unsafe permissions")
)

// MarshalKey encodes key as a PKCS #8 "PRIVATE KEY" PEM block.
func MarshalKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey decodes the first PEM block of data as a private key in
// PKCS #8 ("PRIVATE KEY"), SEC 1 ("EC PRIVATE KEY") or PKCS #1
// ("RSA PRIVATE KEY") form.
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

// ReadKey reads a private key file, refusing one that other users can
// read or write: a key with loose permissions is treated as exposed. A
// missing file is reported wrapping ErrMissing, a loose one wrapping
// ErrPermissions.
func ReadKey(path string) (crypto.Signer, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &missingError{path: path}
	}
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; run `chmod 600 %s` if it was never exposed, else treat the key as compromised", ErrPermissions, path, perm, path)
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

// WriteKey writes key to path in PKCS #8 form with mode 0600, atomically.
func WriteKey(path string, key crypto.Signer) error {
	data, err := MarshalKey(key)
	if err != nil {
		return err
	}
	return WriteAtomic(path, data, 0o600)
}

// missingError is ErrMissing for one path. It also matches
// fs.ErrNotExist, so a caller asking only whether the file is there
// need not know this package's sentinel.
type missingError struct{ path string }

func (e *missingError) Error() string {
	return fmt.Sprintf("%v: %s does not exist", ErrMissing, e.path)
}

func (e *missingError) Unwrap() []error { return []error{ErrMissing, fs.ErrNotExist} }
