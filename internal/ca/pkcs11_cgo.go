//go:build cgo

package ca

import (
	"crypto"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// tokens are the PKCS#11 tokens this process has open: one
// crypto11.Context per module and token, shared by every CA key loaded
// from or generated on that token.
//
// A module is initialised once per process (C_Initialize), and a token's
// login belongs to the application, not to a session: two contexts on one
// token would share one login, so sharing one context is the honest model,
// and the only state it needs is this map. A crypto11.Context is safe for
// concurrent use (a pool of sessions, each signature on one).
//
// Lifetime: a token is opened by the first CA operation that needs it (at
// ca.Open, Init, IssueIntermediate ...: start-up, so a wrong PIN or a
// missing token stops meshd or meshctl there) and stays open until
// CloseTokens, which meshd calls at shutdown and meshctl when a command
// ends; a key loaded from a closed token no longer signs. Lock order:
// tokens.mu alone; it is held across a token's opening, so two first
// uses of one token open it once.
var tokens = struct {
	mu   sync.Mutex
	open map[string]*token
}{open: map[string]*token{}}

// token is one open PKCS#11 token.
type token struct {
	ctx *crypto11.Context
	// label and serial are what the token reports in its token info;
	// serial is what a key reference is matched against.
	label, serial string
	// pin is the SHA-256 of the PIN the context logged in with: a second
	// configuration naming the same token with another PIN is refused
	// rather than served by the first one's login.
	pin [32]byte
}

// openToken returns the open token p selects, opening it on first use.
func openToken(p PKCS11) (*token, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	key := p.Module + "\x00" + p.describe()
	pin := sha256.Sum256([]byte(p.PIN))
	tokens.mu.Lock()
	defer tokens.mu.Unlock()
	if t, ok := tokens.open[key]; ok {
		if subtle.ConstantTimeCompare(t.pin[:], pin[:]) != 1 {
			return nil, fmt.Errorf("%w: %s in %s is already open in this process with another PIN", ErrToken, p.describe(), p.Module)
		}
		return t, nil
	}
	if _, err := os.Stat(p.Module); err != nil {
		return nil, fmt.Errorf("%w: PKCS#11 module %s: %w (--pkcs11-module names the module's shared library, such as /usr/lib/softhsm/libsofthsm2.so)", ErrToken, p.Module, err)
	}
	label, serial, err := findToken(p)
	if err != nil {
		return nil, err
	}
	c11 := &crypto11.Config{Path: p.Module, Pin: p.PIN}
	if serial != "" {
		c11.TokenSerial = serial
	} else {
		c11.TokenLabel = label
	}
	ctx, err := crypto11.Configure(c11)
	if err != nil {
		return nil, tokenError(p, "log in to", err)
	}
	t := &token{ctx: ctx, label: label, serial: serial, pin: pin}
	tokens.open[key] = t
	return t, nil
}

// findToken looks the token p selects up in its module's slots, and
// returns the label and serial it reports. A token that is not there is
// reported with the tokens that are, so the operator sees a typo.
func findToken(p PKCS11) (label, serial string, err error) {
	m := pkcs11.New(p.Module)
	if m == nil {
		return "", "", fmt.Errorf("%w: PKCS#11 module %s could not be loaded (is it a PKCS#11 library built for this machine?)", ErrToken, p.Module)
	}
	defer m.Destroy()
	// Another token of this module may be open in this process already:
	// then the module is initialised, and must stay so.
	switch err := m.Initialize(); {
	case err == nil:
		defer m.Finalize()
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)):
	default:
		return "", "", fmt.Errorf("%w: PKCS#11 module %s failed to initialise: %w (for SoftHSM2: does the tokendir of $SOFTHSM2_CONF exist?)", ErrToken, p.Module, err)
	}
	slots, err := m.GetSlotList(true)
	if err != nil {
		return "", "", fmt.Errorf("%w: PKCS#11 module %s: list slots: %w", ErrToken, p.Module, err)
	}
	var seen []string
	for _, s := range slots {
		info, err := m.GetTokenInfo(s)
		if err != nil {
			return "", "", fmt.Errorf("%w: PKCS#11 module %s: token in slot %d: %w", ErrToken, p.Module, s, err)
		}
		// The token's label, as it reports it (space-padded by some
		// modules), compared exactly to --pkcs11-token; or its slot's
		// number to --pkcs11-slot. Only the module vouches for either.
		l, sn := strings.TrimRight(info.Label, " \x00"), strings.TrimRight(info.SerialNumber, " \x00")
		if (p.Slot != nil && *p.Slot >= 0 && uint(*p.Slot) == s) || (p.Slot == nil && l == p.Token) {
			return l, sn, nil
		}
		seen = append(seen, fmt.Sprintf("%q (slot %d)", l, s))
	}
	sort.Strings(seen)
	have := "none"
	if len(seen) > 0 {
		have = strings.Join(seen, ", ")
	}
	return "", "", fmt.Errorf("%w: %s is not in PKCS#11 module %s (tokens present: %s); was it removed, or is the label mistyped?", ErrToken, p.describe(), p.Module, have)
}

// tokenError explains a PKCS#11 failure of doing what to p's token.
func tokenError(p PKCS11, what string, err error) error {
	var hint string
	switch {
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)):
		hint = "wrong PIN (check --pkcs11-pin-file or $MESHTRUST_PKCS11_PIN)"
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_LOCKED)):
		hint = "the PIN is locked after too many wrong tries; the token's security officer must reset it"
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT)), errors.Is(err, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED)):
		hint = "the token was removed"
	default:
		hint = err.Error()
	}
	return fmt.Errorf("%w: cannot %s %s in %s: %s", ErrToken, what, p.describe(), p.Module, hint)
}

// generate creates a key pair of type kt on the token: the private key
// sensitive, not extractable and for signing only, both halves under a
// random CKA_ID and the label.
func (t *token) generate(kt KeyType, rand io.Reader, label string) (*tokenKey, error) {
	id := make([]byte, 16)
	if _, err := io.ReadFull(rand, id); err != nil {
		return nil, err
	}
	pub, err := crypto11.NewAttributeSetWithIDAndLabel(id, []byte(label))
	if err != nil {
		return nil, err
	}
	priv, err := crypto11.NewAttributeSetWithIDAndLabel(id, []byte(label))
	if err != nil {
		return nil, err
	}
	for typ, v := range map[crypto11.AttributeType]bool{
		crypto11.CkaSensitive: true, crypto11.CkaExtractable: false, crypto11.CkaPrivate: true,
		crypto11.CkaSign: true, crypto11.CkaDecrypt: false, crypto11.CkaToken: true,
	} {
		if err := priv.Set(typ, v); err != nil {
			return nil, err
		}
	}
	var s crypto.Signer
	switch kt {
	case KeyECDSAP256, "":
		s, err = t.ctx.GenerateECDSAKeyPairWithAttributes(pub, priv, elliptic.P256())
	case KeyECDSAP384:
		s, err = t.ctx.GenerateECDSAKeyPairWithAttributes(pub, priv, elliptic.P384())
	case KeyRSA2048:
		s, err = t.ctx.GenerateRSAKeyPairWithAttributes(pub, priv, 2048)
	case KeyRSA4096:
		s, err = t.ctx.GenerateRSAKeyPairWithAttributes(pub, priv, 4096)
	default:
		return nil, fmt.Errorf("%w: key type %s cannot be generated on a PKCS#11 token (ecdsa-p256, ecdsa-p384, rsa-2048 and rsa-4096 can)", ErrToken, kt)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: generate a %s key on %q: %w", ErrToken, kt, t.label, err)
	}
	return &tokenKey{Signer: s, ref: keyRef{Type: keyRefType, TokenLabel: t.label, TokenSerial: t.serial, ID: hex.EncodeToString(id), Label: label}}, nil
}

// find loads the key r names from the token, refusing a reference made
// on another token.
func (t *token) find(r keyRef) (*tokenKey, error) {
	// The token a reference names is the one it was generated on, by the
	// serial that token reported (its label only when it reports none):
	// a token with the same label is another token.
	if r.TokenSerial != t.serial || (t.serial == "" && r.TokenLabel != t.label) {
		return nil, fmt.Errorf("%w: the key is on token %s, but the configured token is %q (serial %s)", ErrToken, r.token(), t.label, t.serial)
	}
	id, _ := hex.DecodeString(r.ID) // checked by parseKeyRef
	// crypto11 reports a missing pair as nil, or as an error when one
	// half of it is gone: either way the key is not there.
	s, err := t.ctx.FindKeyPair(id, nil)
	if err != nil || s == nil {
		detail := ""
		if err != nil {
			detail = " (" + err.Error() + ")"
		}
		return nil, fmt.Errorf("%w: no key with id %s (%q) on token %q (serial %s): the key object was deleted, or the token was re-initialised%s", ErrToken, r.ID, r.Label, t.label, t.serial, detail)
	}
	return &tokenKey{Signer: s, ref: r}, nil
}

// CloseTokens closes every PKCS#11 token the process opened, finalising
// their modules: meshd calls it at shutdown, meshctl when a command ends.
// A CA key loaded from a closed token no longer signs; a later CA
// operation opens the token again.
func CloseTokens() {
	tokens.mu.Lock()
	defer tokens.mu.Unlock()
	keys := make([]string, 0, len(tokens.open))
	for k := range tokens.open {
		keys = append(keys, k)
	}
	for _, k := range keys {
		tokens.open[k].ctx.Close()
		delete(tokens.open, k)
	}
}
