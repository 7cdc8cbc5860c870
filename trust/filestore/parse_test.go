package filestore_test

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/trust/filestore"
)

func TestParse(t *testing.T) {
	t.Parallel()
	root := pkitest.NewRoot(t, "root")
	inter := root.Intermediate(t, "inter")
	leafPEM := pkitest.CertPEM(root.Leaf(t, "leaf"))
	for _, tc := range []struct {
		name        string
		data        []byte
		wantCAs     int
		wantSkipped []string // substrings, one per skipped block
		wantErr     string
	}{
		{name: "one CA", data: root.PEM(), wantCAs: 1},
		{name: "bundle with text", data: slices.Concat([]byte("Certificate:\n  junk\n"), root.PEM(), []byte("junk\n"), inter.PEM()), wantCAs: 2},
		{name: "leaf in a bundle", data: slices.Concat(leafPEM, root.PEM()), wantCAs: 1, wantSkipped: []string{`certificate 1 ("leaf") is not a CA`}},
		{name: "leaf alone", data: leafPEM, wantSkipped: []string{"not a CA"}},
		{name: "other block", data: slices.Concat(root.PEM(), []byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")), wantCAs: 1, wantSkipped: []string{`block 2 is a "RSA PRIVATE KEY"`}},
		{name: "empty", data: nil, wantErr: "no PEM data"},
		{name: "DER, not PEM", data: root.Cert.Raw, wantErr: "no PEM data"},
		{name: "bundle cut in its second block", data: cut(slices.Concat(root.PEM(), inter.PEM()), len(root.PEM())+40), wantErr: "block 2 is incomplete or damaged"},
		{name: "one block cut short", data: cut(root.PEM(), len(root.PEM())/2), wantErr: "block 1 is incomplete or damaged"},
		{name: "damaged block before a good one", data: slices.Concat(damage(root.PEM()), inter.PEM()), wantErr: "block 1 is incomplete or damaged"},
		{name: "damaged certificate", data: slices.Concat(root.PEM(), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")), wantErr: "certificate 2 does not parse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			certs, skipped, err := filestore.Parse(tc.data)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(certs) != tc.wantCAs {
				t.Errorf("%d CAs, want %d", len(certs), tc.wantCAs)
			}
			if len(skipped) != len(tc.wantSkipped) {
				t.Fatalf("skipped %q, want %d entries", skipped, len(tc.wantSkipped))
			}
			for i, want := range tc.wantSkipped {
				if !strings.Contains(skipped[i], want) {
					t.Errorf("skipped[%d] = %q, want it to contain %q", i, skipped[i], want)
				}
			}
		})
	}
}

// cut returns the first n bytes of data, as a file written in place is
// seen half-written.
func cut(data []byte, n int) []byte { return slices.Clone(data[:n]) }

// damage corrupts the base64 of a PEM block.
func damage(data []byte) []byte { return bytes.Replace(data, []byte("\n"), []byte("\n!!"), 3) }

func FuzzParse(f *testing.F) {
	root := pkitest.NewRoot(f, "root")
	f.Add(root.PEM())
	f.Add(pkitest.CertPEM(root.Leaf(f, "leaf")))
	f.Add([]byte("-----BEGIN X-----\nAAAA\n-----END X-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, skipped, err := filestore.Parse(data)
		if err != nil && (certs != nil || skipped != nil) {
			t.Fatalf("error %v with results", err)
		}
		for _, c := range certs {
			if !c.IsCA || !c.BasicConstraintsValid {
				t.Fatalf("Parse returned a certificate that is not a CA: %q", c.Subject)
			}
		}
	})
}
