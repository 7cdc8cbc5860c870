package credentials_test

import (
	"crypto/tls"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/pkitest"
)

// issue returns a certificate of ca for cn presenting ca's intermediates,
// usable by servers on loopback and by clients unless mods say otherwise.
func issue(t testing.TB, ca *pkitest.CA, cn string, mods ...pkitest.Modifier) tls.Certificate {
	t.Helper()
	return ca.Issue(t, cn, append([]pkitest.Modifier{pkitest.Localhost()}, mods...)...)
}

// creds returns credentials of a certificate ca issued for cn, trusting
// the roots of roots.
func creds(t testing.TB, ca *pkitest.CA, cn string, roots ...*pkitest.CA) *credentials.Credentials {
	t.Helper()
	c := &credentials.Credentials{Certificate: issue(t, ca, cn)}
	for _, r := range roots {
		c.Roots = append(c.Roots, r.Root)
	}
	return c
}

func td(t testing.TB, name string) spiffeid.TrustDomain {
	t.Helper()
	d, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
