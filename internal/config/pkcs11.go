package config

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/meshtrust/meshtrust/internal/ca"
)

// The environment variables of the PKCS#11 settings. The PIN has a
// variable of its own and a file, never a flag: a command line is visible
// to every user of the machine (ps, /proc/<pid>/cmdline).
const (
	EnvPKCS11Module  = "MESHTRUST_PKCS11_MODULE"
	EnvPKCS11Token   = "MESHTRUST_PKCS11_TOKEN"
	EnvPKCS11Slot    = "MESHTRUST_PKCS11_SLOT"
	EnvPKCS11PINFile = "MESHTRUST_PKCS11_PIN_FILE"
	EnvPKCS11PIN     = "MESHTRUST_PKCS11_PIN"
)

// maxPIN bounds what a PIN file may hold; PKCS#11 PINs are short.
const maxPIN = 256

// PKCS11 is the PKCS#11 token the CA's keys are on, as meshd's and
// meshctl's flags name it.
type PKCS11 struct {
	Module, Token, Slot, PINFile string
}

// Register adds --pkcs11-module, --pkcs11-token, --pkcs11-slot and
// --pkcs11-pin-file to f, each defaulting to its environment variable.
func (p *PKCS11) Register(f *pflag.FlagSet) {
	f.StringVar(&p.Module, "pkcs11-module", os.Getenv(EnvPKCS11Module), "keep the CA's keys on a PKCS#11 token (an HSM): the module's shared library, such as /usr/lib/softhsm/libsofthsm2.so (env "+EnvPKCS11Module+")")
	f.StringVar(&p.Token, "pkcs11-token", os.Getenv(EnvPKCS11Token), "the label of the PKCS#11 token (env "+EnvPKCS11Token+")")
	f.StringVar(&p.Slot, "pkcs11-slot", os.Getenv(EnvPKCS11Slot), "the slot number of the PKCS#11 token, instead of --pkcs11-token (env "+EnvPKCS11Slot+")")
	f.StringVar(&p.PINFile, "pkcs11-pin-file", os.Getenv(EnvPKCS11PINFile), "file holding the token's user PIN, mode 0600 (env "+EnvPKCS11PINFile+"; or the PIN itself in $"+EnvPKCS11PIN+")")
}

// Resolve returns the CA's PKCS#11 settings, the PIN read from the PIN
// file or from $MESHTRUST_PKCS11_PIN (getenv). Nothing set is no token:
// the zero ca.PKCS11.
func (p PKCS11) Resolve(getenv func(string) string) (ca.PKCS11, error) {
	out := ca.PKCS11{Module: p.Module, Token: p.Token}
	envPIN := getenv(EnvPKCS11PIN)
	if p.Module == "" && p.Token == "" && p.Slot == "" && p.PINFile == "" {
		if envPIN != "" {
			return out, fmt.Errorf("$%s is set but no PKCS#11 token is (--pkcs11-module and --pkcs11-token)", EnvPKCS11PIN)
		}
		return out, nil
	}
	if p.Slot != "" {
		n, err := strconv.Atoi(p.Slot)
		if err != nil || n < 0 {
			return out, fmt.Errorf("--pkcs11-slot %q: want a slot number", p.Slot)
		}
		out.Slot = &n
	}
	switch {
	case p.PINFile != "" && envPIN != "":
		return out, fmt.Errorf("the PKCS#11 PIN is given twice, in --pkcs11-pin-file %s and in $%s; keep one", p.PINFile, EnvPKCS11PIN)
	case p.PINFile != "":
		pin, err := readPIN(p.PINFile)
		if err != nil {
			return out, err
		}
		out.PIN = pin
	default:
		out.PIN = envPIN
	}
	return out, nil
}

// readPIN reads a PIN file, refusing one others can read or write: a PIN
// with loose permissions is exposed as a key file would be.
func readPIN(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--pkcs11-pin-file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("--pkcs11-pin-file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("--pkcs11-pin-file %s has mode %04o; a PIN must be readable by its owner only (chmod 600 %s)", path, perm, path)
	}
	if fi.Size() > maxPIN {
		return "", fmt.Errorf("--pkcs11-pin-file %s holds %d bytes; a PIN is at most %d", path, fi.Size(), maxPIN)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--pkcs11-pin-file: %w", err)
	}
	pin := strings.TrimRight(string(data), "\r\n")
	if pin == "" {
		return "", errors.New("--pkcs11-pin-file " + path + " is empty")
	}
	return pin, nil
}
