package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"reflect"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// A fast path for the leaves leafPolicy builds: x509.CreateCertificate
// spends about a quarter of its CPU in reflective encoding/asn1 marshalling
// (of the TBSCertificate, the subject, the public key and the extensions).
// createLeaf writes the same bytes directly with cryptobyte, for exactly
// the template shapes the policy produces, and refuses (ok false) anything
// else, so that a template it does not know always takes the standard path.

// errBadSignature is the error of a signer whose signature does not verify.
var errBadSignature = errors.New("signature returned by signer is invalid")

// createLeaf returns the DER certificate x509.CreateCertificate(rand, tmpl,
// parent, pub, key) would, for a template the leaf policy built; spki is
// pub's DER SubjectPublicKeyInfo, exactly as the requester presented it
// (csr.RawSubjectPublicKeyInfo, or a certificate's). ok is false, and
// nothing is signed, for a template or signer outside what it encodes: the
// caller then uses x509.CreateCertificate. As x509.CreateCertificate does,
// it refuses a key that is not parent's and checks the signature against
// key.Public() before returning it: a signer that fails or returns a
// signature that does not verify is an error, and no certificate. ok is
// true whenever err is set: the template was one it encodes, and the
// caller must not retry it on the standard path.
func createLeaf(rand io.Reader, tmpl *x509.Certificate, parent *x509.Certificate, spki []byte, key crypto.Signer) (der []byte, ok bool, err error) {
	alg, ok := leafSignatureAlgorithm(key.Public())
	if !ok || !encodableLeaf(tmpl) || len(parent.RawSubject) == 0 || !wellFormedSPKI(spki) {
		return nil, false, nil
	}
	if parent.PublicKey != nil && !publicKeyEqual(key.Public(), parent.PublicKey) {
		return nil, true, errors.New("sign: the signing key does not match the issuer certificate's public key")
	}
	subject, ok := leafSubject(tmpl.Subject.CommonName)
	if !ok {
		return nil, false, nil
	}
	exts, ok := leafExtensions(tmpl, parent, subject)
	if !ok {
		return nil, false, nil
	}

	b := cryptobyte.NewBuilder(make([]byte, 0, 512+len(spki)+len(exts)))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1Int64(2) // v3
		})
		b.AddASN1BigInt(tmpl.SerialNumber)
		b.AddBytes(alg.id)
		b.AddBytes(parent.RawSubject)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			addTime(b, tmpl.NotBefore)
			addTime(b, tmpl.NotAfter)
		})
		b.AddBytes(subject)
		b.AddBytes(spki)
		b.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddBytes(exts) })
		})
	})
	tbs, err := b.Bytes()
	if err != nil {
		// A time outside what DER can represent; x509.CreateCertificate
		// reports it.
		return nil, false, nil
	}

	sig, err := signLeaf(rand, key, alg.hash, tbs)
	if err != nil {
		return nil, true, err
	}
	c := cryptobyte.NewBuilder(make([]byte, 0, len(tbs)+len(alg.id)+len(sig)+16))
	c.AddASN1(cbasn1.SEQUENCE, func(c *cryptobyte.Builder) {
		c.AddBytes(tbs)
		c.AddBytes(alg.id)
		c.AddASN1BitString(sig)
	})
	der, err = c.Bytes()
	return der, true, err
}

// signLeaf signs tbs as crypto.SignMessage does, then checks the signature
// against key.Public() as x509.CreateCertificate does: a signer (an HSM, a
// remote KMS) that misbehaves must never yield a certificate.
func signLeaf(rand io.Reader, key crypto.Signer, h crypto.Hash, tbs []byte) ([]byte, error) {
	sig, err := crypto.SignMessage(key, rand, tbs, h)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	var digest []byte
	if h != 0 {
		hh := h.New()
		hh.Write(tbs)
		digest = hh.Sum(nil)
	}
	valid := false
	switch pub := key.Public().(type) {
	case *ecdsa.PublicKey:
		valid = ecdsa.VerifyASN1(pub, digest, sig)
	case *rsa.PublicKey:
		valid = rsa.VerifyPKCS1v15(pub, h, digest, sig) == nil
	case ed25519.PublicKey:
		valid = ed25519.Verify(pub, tbs, sig)
	}
	if !valid {
		return nil, fmt.Errorf("sign: %w", errBadSignature)
	}
	return sig, nil
}

// leafSigAlg is a signature algorithm: its DER AlgorithmIdentifier and the
// hash signed (zero for Ed25519, which signs the message).
type leafSigAlg struct {
	id   []byte
	hash crypto.Hash
}

// The algorithms x509.CreateCertificate picks by default for each key.
var (
	sigECDSAWithSHA256 = leafSigAlg{algorithmID(asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}, false), crypto.SHA256}
	sigECDSAWithSHA384 = leafSigAlg{algorithmID(asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}, false), crypto.SHA384}
	sigECDSAWithSHA512 = leafSigAlg{algorithmID(asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}, false), crypto.SHA512}
	sigEd25519         = leafSigAlg{algorithmID(asn1.ObjectIdentifier{1, 3, 101, 112}, false), 0}
	// RFC 3279 section 2.2.1: RSA signature algorithms carry NULL parameters.
	sigSHA256WithRSA = leafSigAlg{algorithmID(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}, true), crypto.SHA256}
)

// leafSignatureAlgorithm is x509.CreateCertificate's default signature
// algorithm for a signer's public key.
func leafSignatureAlgorithm(pub crypto.PublicKey) (leafSigAlg, bool) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return sigECDSAWithSHA256, true
		case elliptic.P384():
			return sigECDSAWithSHA384, true
		case elliptic.P521():
			return sigECDSAWithSHA512, true
		}
	case ed25519.PublicKey:
		return sigEd25519, true
	case *rsa.PublicKey:
		return sigSHA256WithRSA, true
	}
	return leafSigAlg{}, false
}

// encodableLeaf reports whether tmpl holds only what a leaf template holds.
// Every field outside that set must be zero: the check compares the rest
// of the struct with its zero value, so a field a later Go release adds to
// x509.Certificate (and perhaps to what CreateCertificate encodes) sends
// the template to the standard path rather than being silently dropped.
func encodableLeaf(tmpl *x509.Certificate) bool {
	if tmpl.SerialNumber == nil || tmpl.SerialNumber.Sign() <= 0 {
		return false
	}
	if !tmpl.BasicConstraintsValid || tmpl.IsCA {
		return false
	}
	if tmpl.KeyUsage != x509.KeyUsageDigitalSignature && tmpl.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
		return false
	}
	for _, u := range tmpl.ExtKeyUsage {
		if u != x509.ExtKeyUsageServerAuth && u != x509.ExtKeyUsageClientAuth {
			return false
		}
	}
	for _, u := range tmpl.URIs {
		if u == nil {
			return false
		}
	}
	rest := *tmpl
	rest.SerialNumber = nil
	rest.Subject.CommonName = ""
	rest.NotBefore, rest.NotAfter = time.Time{}, time.Time{}
	rest.DNSNames, rest.IPAddresses, rest.URIs = nil, nil, nil
	rest.BasicConstraintsValid = false
	rest.KeyUsage, rest.ExtKeyUsage = 0, nil
	rest.SubjectKeyId = nil
	// CreateCertificate takes the subject's key from its pub argument, not
	// from the template, where checked puts it for the policy's sake.
	rest.PublicKey = nil
	return reflect.ValueOf(&rest).Elem().IsZero()
}

// wellFormedSPKI reports whether spki is one DER SubjectPublicKeyInfo and
// nothing more, so a caller's mistake cannot change the TBSCertificate's
// structure around it.
func wellFormedSPKI(spki []byte) bool {
	s := cryptobyte.String(spki)
	var info, alg cryptobyte.String
	var key []byte
	return s.ReadASN1(&info, cbasn1.SEQUENCE) && s.Empty() &&
		info.ReadASN1(&alg, cbasn1.SEQUENCE) && info.ReadASN1BitStringAsBytes(&key) && info.Empty()
}

// leafSubject is the DER Name of a subject with only a common name, as
// pkix.Name.ToRDNSequence and encoding/asn1 write it: a PrintableString
// when every character allows it, else a UTF8String; the empty sequence
// for no name at all.
func leafSubject(cn string) ([]byte, bool) {
	if !utf8.ValidString(cn) {
		return nil, false
	}
	tag := cbasn1.PrintableString
	for i := 0; i < len(cn); i++ {
		if !printable(cn[i]) {
			tag = cbasn1.UTF8String
			break
		}
	}
	b := cryptobyte.NewBuilder(make([]byte, 0, len(cn)+16))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		if cn == "" {
			return
		}
		b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddBytes(oidCommonNameDER)
				b.AddASN1(tag, func(b *cryptobyte.Builder) { b.AddBytes([]byte(cn)) })
			})
		})
	})
	der, err := b.Bytes()
	return der, err == nil
}

// printable is encoding/asn1's PrintableString alphabet as Marshal uses it
// (no '*', no '&').
func printable(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		'\'' <= c && c <= ')' || '+' <= c && c <= '/' || c == ' ' || c == ':' || c == '=' || c == '?'
}

// DER of the OIDs a leaf uses.
var (
	oidCommonNameDER     = oidDER(asn1.ObjectIdentifier{2, 5, 4, 3})
	oidKeyUsageDER       = oidDER(oidKeyUsage)
	oidExtKeyUsageDER    = oidDER(oidExtKeyUsage)
	oidBasicConstrDER    = oidDER(oidBasicConstraints)
	oidSKIDER            = oidDER(oidSKI)
	oidAKIDER            = oidDER(asn1.ObjectIdentifier{2, 5, 29, 35})
	oidSANDER            = oidDER(oidSAN)
	oidServerAuthDER     = oidDER(asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1})
	oidClientAuthDER     = oidDER(asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2})
	emptySubjectDER      = []byte{0x30, 0}
	criticalExtensionDER = []byte{0x01, 0x01, 0xff} // BOOLEAN TRUE
)

func oidDER(oid asn1.ObjectIdentifier) []byte {
	var b cryptobyte.Builder
	b.AddASN1ObjectIdentifier(oid)
	return b.BytesOrPanic()
}

func algorithmID(oid asn1.ObjectIdentifier, nullParams bool) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if nullParams {
			b.AddASN1NULL()
		}
	})
	return b.BytesOrPanic()
}

// leafExtensions is the content of a leaf's extensions field, in
// buildCertExtensions's order: key usage (critical), extended key usage,
// basic constraints (critical), subject key id, authority key id, subject
// alternative names (critical only when the subject is empty, RFC 5280
// section 4.2.1.6). ok is false for a SAN CreateCertificate would refuse.
func leafExtensions(tmpl, parent *x509.Certificate, subject []byte) ([]byte, bool) {
	// As CreateCertificate: the issuer's key id, unless self-issued.
	var aki []byte
	if !bytes.Equal(parent.RawSubject, subject) {
		aki = parent.SubjectKeyId
	}
	for _, d := range tmpl.DNSNames {
		if !ia5(d) {
			return nil, false
		}
	}
	uris := make([]string, len(tmpl.URIs))
	for i, u := range tmpl.URIs {
		if uris[i] = u.String(); !ia5(uris[i]) {
			return nil, false
		}
	}

	b := cryptobyte.NewBuilder(make([]byte, 0, 256))
	addExtension(b, oidKeyUsageDER, true, func(b *cryptobyte.Builder) {
		addKeyUsage(b, tmpl.KeyUsage)
	})
	if len(tmpl.ExtKeyUsage) > 0 {
		addExtension(b, oidExtKeyUsageDER, false, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for _, u := range tmpl.ExtKeyUsage {
					if u == x509.ExtKeyUsageServerAuth {
						b.AddBytes(oidServerAuthDER)
					} else {
						b.AddBytes(oidClientAuthDER)
					}
				}
			})
		})
	}
	// A leaf's BasicConstraints is the empty sequence: cA FALSE is the
	// default and there is no path length.
	addExtension(b, oidBasicConstrDER, true, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {})
	})
	if len(tmpl.SubjectKeyId) > 0 {
		addExtension(b, oidSKIDER, false, func(b *cryptobyte.Builder) {
			b.AddASN1OctetString(tmpl.SubjectKeyId)
		})
	}
	if len(aki) > 0 {
		addExtension(b, oidAKIDER, false, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(aki) })
			})
		})
	}
	if len(tmpl.DNSNames) > 0 || len(tmpl.IPAddresses) > 0 || len(uris) > 0 {
		addExtension(b, oidSANDER, bytes.Equal(subject, emptySubjectDER), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for _, d := range tmpl.DNSNames {
					b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(d)) })
				}
				for _, ip := range tmpl.IPAddresses {
					// A v4 address in 4 bytes whenever it has a v4 form.
					if v4 := ip.To4(); v4 != nil {
						ip = v4
					}
					b.AddASN1(cbasn1.Tag(7).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(ip) })
				}
				for _, u := range uris {
					b.AddASN1(cbasn1.Tag(6).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(u)) })
				}
			})
		})
	}
	der, err := b.Bytes()
	return der, err == nil
}

// addExtension adds one Extension; critical FALSE is the default, so DER
// leaves it out.
func addExtension(b *cryptobyte.Builder, oid []byte, critical bool, value cryptobyte.BuilderContinuation) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(oid)
		if critical {
			b.AddBytes(criticalExtensionDER)
		}
		b.AddASN1(cbasn1.OCTET_STRING, value)
	})
}

// addKeyUsage writes ku as the named BIT STRING RFC 5280 defines: bit 0
// (digitalSignature) first, trailing zero bits dropped.
func addKeyUsage(b *cryptobyte.Builder, ku x509.KeyUsage) {
	v := []byte{bits.Reverse8(byte(ku)), bits.Reverse8(byte(ku >> 8))}
	if v[1] == 0 {
		v = v[:1]
	}
	unused := bits.TrailingZeros8(v[len(v)-1]) // the last byte is never 0
	b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
		b.AddUint8(uint8(unused))
		b.AddBytes(v)
	})
}

// addTime writes t in UTC to the second, as a UTCTime for 1950 to 2049 and
// a GeneralizedTime otherwise (RFC 5280 section 4.1.2.5).
func addTime(b *cryptobyte.Builder, t time.Time) {
	t = t.UTC()
	if y := t.Year(); y >= 1950 && y < 2050 {
		b.AddASN1UTCTime(t)
	} else {
		b.AddASN1GeneralizedTime(t)
	}
}

func ia5(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
