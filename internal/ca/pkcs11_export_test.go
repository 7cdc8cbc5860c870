//go:build cgo

package ca

import (
	"github.com/ThalesGroup/crypto11"
)

// TokenKeyAttributes loads the CA key recorded under base from cfg's token
// and returns its private key object's CKA_EXTRACTABLE and CKA_SENSITIVE,
// as the token reports them, and whether the token refused to read out its
// value (CKA_VALUE).
func TokenKeyAttributes(cfg Config, base string) (extractable, sensitive, valueRefused bool, err error) {
	k, t, err := tokenKeyAt(cfg, base)
	if err != nil {
		return false, false, false, err
	}
	set, err := t.ctx.GetAttributes(k.Signer, []crypto11.AttributeType{crypto11.CkaExtractable, crypto11.CkaSensitive})
	if err != nil {
		return false, false, false, err
	}
	b := func(typ crypto11.AttributeType) bool {
		a := set[typ]
		return a != nil && len(a.Value) == 1 && a.Value[0] != 0
	}
	_, verr := t.ctx.GetAttribute(k.Signer, crypto11.CkaValue)
	return b(crypto11.CkaExtractable), b(crypto11.CkaSensitive), verr != nil, nil
}

// DeleteTokenKey deletes the key pair recorded under base from cfg's token,
// as an operator with the token's PIN could.
func DeleteTokenKey(cfg Config, base string) error {
	k, _, err := tokenKeyAt(cfg, base)
	if err != nil {
		return err
	}
	return k.Signer.(crypto11.Signer).Delete()
}

func tokenKeyAt(cfg Config, base string) (*tokenKey, *token, error) {
	s, err := loadCAKey(cfg, base)
	if err != nil {
		return nil, nil, err
	}
	t, err := openToken(cfg.PKCS11)
	if err != nil {
		return nil, nil, err
	}
	return s.(*tokenKey), t, nil
}

// OpenTokens is how many PKCS#11 tokens the process has open.
func OpenTokens() int {
	tokens.mu.Lock()
	defer tokens.mu.Unlock()
	return len(tokens.open)
}
