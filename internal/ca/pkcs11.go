package ca

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
)

// ErrToken reports a CA key on a PKCS#11 token that cannot be used: the
// module does not load, the token is not there, the PIN is wrong, the key
// object is gone, or a key reference names another token. The CA never
// falls back to key files when it sees one.
var ErrToken = errors.New("ca: PKCS#11 token")

// PKCS11 selects the PKCS#11 token that holds the CA's keys. Its zero value
// means none: the CA's keys are files. With a token configured, every key
// the CA generates (root and intermediates) is generated on it, sensitive
// and not extractable, and only a reference to it (<base>.pkcs11) is
// written to disk; keys recorded as files keep loading from their files.
type PKCS11 struct {
	// Module is the path of the PKCS#11 module, a shared library such as
	// SoftHSM2's /usr/lib/softhsm/libsofthsm2.so.
	Module string
	// Token is the label of the token. Empty when Slot selects it.
	Token string
	// Slot, when not nil, selects the token by the number of its slot
	// instead of its label.
	Slot *int
	// PIN is the token's user PIN. It is never written or logged.
	PIN string
}

// String names the module and token, never the PIN, so a PKCS11 (or a
// Config holding one) printed with %v or %+v cannot show it.
func (p PKCS11) String() string {
	if !p.Configured() {
		return "no PKCS#11 token"
	}
	return "PKCS#11 " + p.describe() + " in " + p.Module
}

// LogValue is String for log/slog.
func (p PKCS11) LogValue() slog.Value { return slog.StringValue(p.String()) }

// Configured reports whether a token is configured.
func (p PKCS11) Configured() bool { return p.Module != "" || p.Token != "" || p.Slot != nil }

// check says what is missing or contradictory in p.
func (p PKCS11) check() error {
	switch {
	case p.Module == "":
		return fmt.Errorf("%w: a token is selected (%s) but no PKCS#11 module is named (--pkcs11-module)", ErrToken, p.describe())
	case p.Token == "" && p.Slot == nil:
		return fmt.Errorf("%w: PKCS#11 module %s is named but no token (--pkcs11-token <label> or --pkcs11-slot <n>)", ErrToken, p.Module)
	case p.Token != "" && p.Slot != nil:
		return fmt.Errorf("%w: both --pkcs11-token %q and --pkcs11-slot %d select a token; keep one", ErrToken, p.Token, *p.Slot)
	case p.PIN == "":
		return fmt.Errorf("%w: no PIN for %s (--pkcs11-pin-file, or $MESHTRUST_PKCS11_PIN)", ErrToken, p.describe())
	}
	return nil
}

// describe names the configured token for messages, never its PIN.
func (p PKCS11) describe() string {
	if p.Slot != nil {
		return "the token in slot " + strconv.Itoa(*p.Slot)
	}
	return strconv.Quote(p.Token)
}

// keyRef is what <base>.pkcs11 holds: which token a CA key is on and which
// object it is. It holds no secret (the key never leaves the token, and
// the PIN comes from the configuration), but it is written 0600 like a
// key file all the same.
type keyRef struct {
	Type string `json:"type"` // always "pkcs11"
	// The token the key was generated on, as it reported itself: a
	// reference is honoured only on the token with this serial (or,
	// for a token that reports none, this label).
	TokenLabel  string `json:"token_label"`
	TokenSerial string `json:"token_serial"`
	// ID is the key objects' CKA_ID in hex; Label their CKA_LABEL, for
	// an operator listing the token (pkcs11-tool -O).
	ID    string `json:"id"`
	Label string `json:"label"`
}

const keyRefType = "pkcs11"

// maxKeyRef bounds what parseKeyRef reads: a reference is a few hundred
// bytes.
const maxKeyRef = 4096

func (r keyRef) marshal() []byte {
	b, _ := json.MarshalIndent(r, "", "  ") // strings only: cannot fail
	return append(b, '\n')
}

func parseKeyRef(data []byte) (keyRef, error) {
	var r keyRef
	if len(data) > maxKeyRef {
		return r, fmt.Errorf("%w: key reference of %d bytes; a reference is a few hundred", ErrToken, len(data))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, fmt.Errorf("%w: key reference does not parse: %w", ErrToken, err)
	}
	if r.Type != keyRefType {
		return r, fmt.Errorf("%w: key reference of type %q, want %q", ErrToken, r.Type, keyRefType)
	}
	if id, err := hex.DecodeString(r.ID); err != nil || len(id) == 0 {
		return r, fmt.Errorf("%w: key reference has no valid id (%q)", ErrToken, r.ID)
	}
	if r.TokenLabel == "" && r.TokenSerial == "" {
		return r, fmt.Errorf("%w: key reference names no token", ErrToken)
	}
	return r, nil
}

// token names the token the reference points to, for messages.
func (r keyRef) token() string {
	return fmt.Sprintf("%q (serial %s)", r.TokenLabel, r.TokenSerial)
}

// tokenKey is a CA key on a PKCS#11 token: a crypto.Signer whose Sign runs
// on the token, and the reference saveCAKey writes for it.
type tokenKey struct {
	crypto.Signer
	ref keyRef
}

// OpenToken opens the token p selects and logs in to it, as the first CA
// operation that needs it would: meshd and meshctl call it at start, so
// a module that does not load, a missing token or a wrong PIN stops them
// there, even when no key is on the token yet. The token stays open until
// CloseTokens.
func OpenToken(p PKCS11) error {
	_, err := openToken(p)
	return err
}
