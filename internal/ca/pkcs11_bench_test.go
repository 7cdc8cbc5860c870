package ca_test

import (
	"fmt"
	"testing"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/hsmtest"
)

// BenchmarkIssueKeyStore compares issuance with the intermediate's key in
// a file and on a SoftHSM2 token, in one run because the machines are
// noisy: both parse a pre-generated agent CSR and Sign it through the
// policy into the SQLite store (BenchmarkIssue's ca), so the ratio
// softhsm2/file is the cost of signing through PKCS#11 alone. The root is
// on the token too in the softhsm2 case, as `ca init --pkcs11-…` makes it.
//
//	go test -run XXX -bench BenchmarkIssueKeyStore -count 3 ./internal/ca/
func BenchmarkIssueKeyStore(b *testing.B) {
	const pool = 256
	csrs := make([][]byte, pool)
	for i := range csrs {
		csrs[i] = agentCSR(b, fmt.Sprintf("bench-%d", i), "bench")
	}
	for _, where := range []string{"file", "softhsm2"} {
		b.Run(where, func(b *testing.B) {
			var o caOptions
			if where == "softhsm2" {
				tok := hsmtest.New(b, "meshtrust-bench", ca.CloseTokens)
				o.mod = func(c *ca.Config) { c.PKCS11 = ca.PKCS11{Module: tok.Module, Token: tok.Label, PIN: tok.PIN} }
			}
			benchSign(b, newCA(b, o).ca, csrs)
		})
	}
}
