package store

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/trust"
)

// The helpers below are the parts of a store implementation that do not
// depend on its database: how times are kept, what a valid record is.

// Nanos returns t as Unix nanoseconds, the form the stores keep times in
// (exact, and comparable as numbers), or an error naming field if t lies
// outside the years 1678 to 2262 that form can hold.
func Nanos(field string, t time.Time) (int64, error) {
	if t.Before(time.Unix(0, math.MinInt64)) || t.After(time.Unix(0, math.MaxInt64)) {
		return 0, fmt.Errorf("%s %s is outside the range the store can hold (years 1678 to 2262)", field, t.UTC().Format(time.RFC3339))
	}
	return t.UnixNano(), nil
}

// FromNanos is the inverse of Nanos, in UTC.
func FromNanos(n int64) time.Time {
	return time.Unix(0, n).UTC()
}

// ValidReason reports whether r is an RFC 5280 CRLReason code (section
// 5.3.1: 0 to 10, 7 unused).
func ValidReason(r int) bool {
	return r >= 0 && r <= 10 && r != 7
}

// IsSHA256Hex reports whether h is a SHA-256 in lowercase hex, the form a
// join token's hash takes.
func IsSHA256Hex(h string) bool {
	if len(h) != 64 {
		return false
	}
	for _, c := range []byte(h) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// AgentNodeID returns the node id of an agent identity's common name
// ("ct200" for "opus@ct200"), or "": the column a node's revocation finds
// its agents' certificates by. BlockingNodeName returns the node's
// identity name instead ("ct200.mesh").
func AgentNodeID(cn string) string {
	if id, err := identity.Parse(cn); err == nil && id.Kind == identity.KindAgent {
		return id.Node
	}
	return ""
}

// PEMKeyHash returns KeyHash of the certificate in PEM form: the key of a
// certificate recorded before certificates carried their key's hash.
func PEMKeyHash(data []byte) (string, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return "", errors.New("the recorded certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", err
	}
	return trust.KeyHash(cert.RawSubjectPublicKeyInfo), nil
}
