//go:build !cgo

package ca

import (
	"fmt"
	"io"
)

// token is never opened in a build without cgo.
type token struct{}

// openToken refuses: loading a PKCS#11 module (dlopen) needs cgo, and this
// binary was built without it.
func openToken(p PKCS11) (*token, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w: this binary was built without cgo (CGO_ENABLED=0, as the static image is), and PKCS#11 needs cgo to load %s: use a build with CGO_ENABLED=1 (docs/hsm.md)", ErrToken, p.Module)
}

func (t *token) generate(KeyType, io.Reader, string) (*tokenKey, error) {
	return nil, fmt.Errorf("%w: no PKCS#11 support in this build", ErrToken)
}

func (t *token) find(keyRef) (*tokenKey, error) {
	return nil, fmt.Errorf("%w: no PKCS#11 support in this build", ErrToken)
}

// CloseTokens closes every PKCS#11 token the process opened: none, in a
// build without cgo.
func CloseTokens() {}
