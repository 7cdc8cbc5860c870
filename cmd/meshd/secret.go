package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshtrust/meshtrust/pemfile"
)

// minSecretLen is the shortest bootstrap secret meshd accepts: anything
// shorter could be guessed past the enrollment rate limit.
const minSecretLen = 16

// secretSource is one place a bootstrap secret may come from.
type secretSource struct {
	name  string // for messages: a flag, variable or file
	value string
}

// loadBootstrapSecret gathers the bootstrap secret from every place it may
// be configured, under its name and under the seed's earlier name
// mesh.secret, so the rename is a no-op for operators. Two different
// values are an error; so is a secret file others can read.
func loadBootstrapSecret(o *options) (string, error) {
	var found []secretSource
	addFile := func(what, path string, required bool) error {
		if path == "" {
			return nil
		}
		fi, err := os.Stat(path)
		if errors.Is(err, os.ErrNotExist) && !required {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if err := checkPrivate(what, path); err != nil {
			return err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return fmt.Errorf("%s %s has mode %04o; a bootstrap secret must be readable by its owner only (chmod 600 %s)", what, path, fi.Mode().Perm(), path)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		found = append(found, secretSource{what + " " + path, strings.TrimSpace(string(data))})
		return nil
	}
	for _, f := range []struct {
		what, path string
		required   bool
	}{
		{"--bootstrap-secret-file", o.secretFile, true},
		{"--mesh-secret-file", o.meshSecretFile, true},
		{"file", filepath.Join(o.DataDir, "bootstrap.secret"), false},
		{"file", filepath.Join(o.DataDir, "mesh.secret"), false},
	} {
		if err := addFile(f.what, f.path, f.required); err != nil {
			return "", err
		}
	}
	for _, env := range []string{"MESHTRUST_BOOTSTRAP_SECRET", "MESHTRUST_MESH_SECRET"} {
		if v := strings.TrimSpace(os.Getenv(env)); v != "" {
			found = append(found, secretSource{"$" + env, v})
		}
	}
	if len(found) == 0 {
		return "", nil
	}
	for _, s := range found[1:] {
		if s.value != found[0].value {
			return "", fmt.Errorf("the bootstrap secret is configured twice with different values (%s and %s); keep one", found[0].name, s.name)
		}
	}
	if len(found[0].value) < minSecretLen {
		return "", fmt.Errorf("the bootstrap secret from %s is %d characters long; use at least %d random characters", found[0].name, len(found[0].value), minSecretLen)
	}
	return found[0].value, nil
}

// devSecret creates <data-dir>/bootstrap.secret for --dev when no secret is
// configured, so enrollment works out of the box.
func devSecret(o *options) error {
	path := filepath.Join(o.DataDir, "bootstrap.secret")
	if pemfile.Exists(path) || pemfile.Exists(filepath.Join(o.DataDir, "mesh.secret")) || o.secretFile != "" || o.meshSecretFile != "" ||
		os.Getenv("MESHTRUST_BOOTSTRAP_SECRET") != "" || os.Getenv("MESHTRUST_MESH_SECRET") != "" {
		return nil
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(base64.RawURLEncoding.EncodeToString(raw[:])+"\n"), 0o600)
}
