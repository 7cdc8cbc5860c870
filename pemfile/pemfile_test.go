package pemfile_test

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/pemfile"
)

func newP256() *ecdsa.PrivateKey { return must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)) }

// rsaKey is generated once: RSA key generation is slow under -race.
var rsaKey = sync.OnceValue(func() *rsa.PrivateKey { return must(rsa.GenerateKey(rand.Reader, 2048)) })

func newCert(cn string) *x509.Certificate {
	key := newP256()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	return must(x509.ParseCertificate(must(x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key))))
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// must unwraps the result of making or encoding a test's own key or
// certificate, which does not fail.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestParseKey(t *testing.T) {
	t.Parallel()
	ec := newP256()
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	x25519, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		data    []byte
		want    crypto.PublicKey // nil: an error is wanted
		wantErr string
	}{
		{"PKCS #8 ECDSA", pemBlock("PRIVATE KEY", must(x509.MarshalPKCS8PrivateKey(ec))), ec.Public(), ""},
		{"PKCS #8 RSA", pemBlock("PRIVATE KEY", must(x509.MarshalPKCS8PrivateKey(rsaKey()))), rsaKey().Public(), ""},
		{"PKCS #8 Ed25519", pemBlock("PRIVATE KEY", must(x509.MarshalPKCS8PrivateKey(ed))), ed.Public(), ""},
		{"SEC 1", pemBlock("EC PRIVATE KEY", must(x509.MarshalECPrivateKey(ec))), ec.Public(), ""},
		{"PKCS #1", pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey())), rsaKey().Public(), ""},
		{"text around the block", append(append([]byte("key for ct1\n"), pemBlock("PRIVATE KEY", must(x509.MarshalPKCS8PrivateKey(ec)))...), "trailer\n"...), ec.Public(), ""},
		{"no PEM", []byte("not a key"), nil, "no PEM block found"},
		{"empty", nil, nil, "no PEM block found"},
		{"a certificate", pemfile.EncodeCerts(newCert("c")), nil, `PEM block is "CERTIFICATE", want PRIVATE KEY`},
		{"a public key", pemBlock("PUBLIC KEY", must(x509.MarshalPKIXPublicKey(ec.Public()))), nil, `PEM block is "PUBLIC KEY"`},
		{"damaged PKCS #8", pemBlock("PRIVATE KEY", []byte{0x30, 0x03, 0x02, 0x01, 0x00}), nil, "parse private key"},
		{"SEC 1 body under a PKCS #1 label", pemBlock("RSA PRIVATE KEY", must(x509.MarshalECPrivateKey(ec))), nil, "parse private key"},
		{"a key that cannot sign", pemBlock("PRIVATE KEY", must(x509.MarshalPKCS8PrivateKey(x25519))), nil, "cannot sign"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := pemfile.ParseKey(tc.data)
			if tc.want == nil {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseKey = %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tc.want) {
				t.Error("ParseKey returned another key")
			}
		})
	}
}

func TestMarshalKeyRoundTrip(t *testing.T) {
	t.Parallel()
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []crypto.Signer{newP256(), rsaKey(), ed} {
		data, err := pemfile.MarshalKey(key)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := pem.Decode(data); b == nil || b.Type != "PRIVATE KEY" {
			t.Fatalf("MarshalKey(%T) wrote %q, want a PKCS #8 PRIVATE KEY block", key, data)
		}
		got, err := pemfile.ParseKey(data)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
			t.Errorf("%T did not survive MarshalKey and ParseKey", key)
		}
	}
}

func TestReadKey(t *testing.T) {
	t.Parallel()
	key := newP256()
	keyPEM := must(pemfile.MarshalKey(key))
	cases := []struct {
		name    string
		data    []byte // nil: no file
		mode    os.FileMode
		wantErr error
		wantMsg []string
	}{
		{"0600", keyPEM, 0o600, nil, nil},
		{"0400", keyPEM, 0o400, nil, nil},
		{"0644", keyPEM, 0o644, pemfile.ErrPermissions, []string{"has mode 0644", "run `chmod 600 ", "compromised"}},
		{"0640", keyPEM, 0o640, pemfile.ErrPermissions, []string{"has mode 0640"}},
		{"0604", keyPEM, 0o604, pemfile.ErrPermissions, []string{"has mode 0604"}},
		{"0620 group may write", keyPEM, 0o620, pemfile.ErrPermissions, []string{"has mode 0620"}},
		{"0602 others may write", keyPEM, 0o602, pemfile.ErrPermissions, []string{"has mode 0602"}},
		{"missing", nil, 0, pemfile.ErrMissing, []string{"key file missing", "does not exist"}},
		{"not a key", pemfile.EncodeCerts(newCert("c")), 0o600, nil, []string{"want PRIVATE KEY"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "node.key")
			if tc.data != nil {
				if err := os.WriteFile(path, tc.data, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, tc.mode); err != nil {
					t.Fatal(err)
				}
			}
			got, err := pemfile.ReadKey(path)
			if tc.wantErr == nil && tc.wantMsg == nil {
				if err != nil {
					t.Fatal(err)
				}
				if !key.PublicKey.Equal(got.Public()) {
					t.Error("ReadKey returned another key")
				}
				return
			}
			if err == nil {
				t.Fatal("ReadKey succeeded, want an error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("ReadKey = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && (errors.Is(err, pemfile.ErrMissing) || errors.Is(err, pemfile.ErrPermissions)) {
				t.Errorf("ReadKey = %v, want neither ErrMissing nor ErrPermissions", err)
			}
			for _, m := range append(tc.wantMsg, path) {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("ReadKey = %q, want it to say %q", err, m)
				}
			}
		})
	}
}

// TestReadKeyMissingIsNotExist: callers that only ask whether the file is
// there keep working with fs.ErrNotExist.
func TestReadKeyMissingIsNotExist(t *testing.T) {
	t.Parallel()
	_, err := pemfile.ReadKey(filepath.Join(t.TempDir(), "absent.key"))
	if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, pemfile.ErrMissing) {
		t.Fatalf("ReadKey of a missing file = %v, want both ErrMissing and fs.ErrNotExist", err)
	}
}

func TestWriteKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "ca.key")
	// A loose file already there is replaced by a 0600 one.
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	key := newP256()
	if err := pemfile.WriteKey(path, key); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("WriteKey left mode %04o, want 0600", fi.Mode().Perm())
	}
	got, err := pemfile.ReadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(got.Public()) {
		t.Error("ReadKey after WriteKey returned another key")
	}
	requireOnly(t, dir, "ca.key")
}

func TestParseCerts(t *testing.T) {
	t.Parallel()
	a, b := newCert("a"), newCert("b")
	keyPEM := must(pemfile.MarshalKey(newP256()))
	cases := []struct {
		name    string
		data    []byte
		want    []*x509.Certificate
		wantErr string
	}{
		{"one", pemfile.EncodeCerts(a), []*x509.Certificate{a}, ""},
		{"two, in order", pemfile.EncodeCerts(b, a), []*x509.Certificate{b, a}, ""},
		{"text around, a key between", bytes.Join([][]byte{[]byte("subject=a\n"), pemfile.EncodeCerts(a), keyPEM, pemfile.EncodeCerts(b), []byte("end\n")}, nil), []*x509.Certificate{a, b}, ""},
		{"empty", nil, nil, "no CERTIFICATE PEM block found"},
		{"not PEM", a.Raw, nil, "no CERTIFICATE PEM block found"},
		{"only a key", keyPEM, nil, "no CERTIFICATE PEM block found"},
		{"a damaged certificate after a good one", append(pemfile.EncodeCerts(a), pemBlock("CERTIFICATE", []byte{0x30, 0x00})...), nil, "parse certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := pemfile.ParseCerts(tc.data)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseCerts = %v, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("ParseCerts returned %d certificates, want %d", len(got), len(tc.want))
			}
			for i := range got {
				if !got[i].Equal(tc.want[i]) {
					t.Errorf("certificate %d is %s, want %s", i, got[i].Subject.CommonName, tc.want[i].Subject.CommonName)
				}
			}
		})
	}
}

func TestEncodeCerts(t *testing.T) {
	t.Parallel()
	if got := pemfile.EncodeCerts(); len(got) != 0 {
		t.Errorf("EncodeCerts() = %q, want nothing", got)
	}
	a, b := newCert("a"), newCert("b")
	want := append(pemBlock("CERTIFICATE", a.Raw), pemBlock("CERTIFICATE", b.Raw)...)
	if got := pemfile.EncodeCerts(a, b); !bytes.Equal(got, want) {
		t.Errorf("EncodeCerts(a, b) =\n%s\nwant\n%s", got, want)
	}
}

func TestReadCert(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, b := newCert("a"), newCert("b")
	chain := filepath.Join(dir, "node.crt")
	if err := os.WriteFile(chain, pemfile.EncodeCerts(a, b), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := pemfile.ReadCert(chain); err != nil || !got.Equal(a) {
		t.Errorf("ReadCert = %v, %v; want the first certificate", got, err)
	}
	if _, err := pemfile.ReadCert(filepath.Join(dir, "absent.crt")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadCert of a missing file = %v, want fs.ErrNotExist", err)
	}
	keyFile := filepath.Join(dir, "node.key")
	if err := pemfile.WriteKey(keyFile, newP256()); err != nil {
		t.Fatal(err)
	}
	if _, err := pemfile.ReadCert(keyFile); err == nil || !strings.Contains(err.Error(), keyFile) || !strings.Contains(err.Error(), "no CERTIFICATE") {
		t.Errorf("ReadCert of a key file = %v, want an error naming the file", err)
	}
}

func TestWriteAtomic(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		before []byte // nil: no file before
		perm   os.FileMode
	}{
		{"new 0644", nil, 0o644},
		{"new 0600", nil, 0o600},
		{"replaces a 0600 file with 0644", []byte("old"), 0o644},
		{"replaces a 0644 file with 0600", []byte("old"), 0o600},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "chain.pem")
			if tc.before != nil {
				if err := os.WriteFile(path, tc.before, 0o644^tc.perm|0o600); err != nil {
					t.Fatal(err)
				}
			}
			data := []byte("new contents\n")
			if err := pemfile.WriteAtomic(path, data, tc.perm); err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
				t.Errorf("file holds %q, %v; want %q", got, err, data)
			}
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != tc.perm {
				t.Errorf("mode %v, %v; want %04o", fi.Mode().Perm(), err, tc.perm)
			}
			requireOnly(t, dir, "chain.pem")
		})
	}
}

// TestWriteAtomicFailureLeavesNoTemp: when the rename fails, what was at
// path is untouched and the temporary file is gone.
func TestWriteAtomicFailureLeavesNoTemp(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "busy")
	if err := os.MkdirAll(filepath.Join(path, "inside"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := pemfile.WriteAtomic(path, []byte("x"), 0o644); err == nil {
		t.Fatal("WriteAtomic over a non-empty directory succeeded")
	}
	if fi, err := os.Stat(filepath.Join(path, "inside")); err != nil || !fi.IsDir() {
		t.Errorf("the directory at path was disturbed: %v", err)
	}
	requireOnly(t, dir, "busy")
	if err := pemfile.WriteAtomic(filepath.Join(dir, "absent", "f"), []byte("x"), 0o644); err == nil {
		t.Error("WriteAtomic into a missing directory succeeded")
	}
}

func TestMkdirPrivate(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		mode    os.FileMode // 0: the dir does not exist before
		wantErr error
		wantMsg string
	}{
		{"missing, created 0700", 0, nil, ""},
		{"0700", 0o700, nil, ""},
		{"0750 readable by the group", 0o750, nil, ""},
		{"0755 readable by all", 0o755, nil, ""},
		{"0770 group may write", 0o770, pemfile.ErrPermissions, "has mode 0770"},
		{"0757 others may write", 0o757, pemfile.ErrPermissions, "has mode 0757"},
		{"0777", 0o777, pemfile.ErrPermissions, "run `chmod 700 "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "a", "b")
			if tc.mode != 0 {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(dir, tc.mode); err != nil {
					t.Fatal(err)
				}
			}
			err := pemfile.MkdirPrivate(dir)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), dir) {
					t.Fatalf("MkdirPrivate = %v, want %v saying %q", err, tc.wantErr, tc.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tc.mode
			if want == 0 {
				want = 0o700
			}
			for _, d := range []string{dir, filepath.Dir(dir)} {
				fi, err := os.Stat(d)
				if err != nil {
					t.Fatal(err)
				}
				if d == dir && fi.Mode().Perm() != want {
					t.Errorf("%s has mode %04o, want %04o", d, fi.Mode().Perm(), want)
				}
				if tc.mode == 0 && fi.Mode().Perm() != 0o700 {
					t.Errorf("created %s with mode %04o, want 0700", d, fi.Mode().Perm())
				}
			}
		})
	}
	t.Run("a file", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := pemfile.MkdirPrivate(path); err == nil {
			t.Error("MkdirPrivate on a file succeeded")
		}
	})
}

// requireOnly fails unless dir holds exactly the named entries: no
// temporary file was left behind.
func requireOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("%s holds %v, want only %v", dir, got, names)
	}
}
