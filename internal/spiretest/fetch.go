package spiretest

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/meshtrust/meshtrust/internal/eventually"
)

// FetchSVID waits until the SPIRE agent gives the calling test binary the
// X.509-SVID id (the agent syncs new entries every 5 s) and returns it.
// The Workload API's answer is searched for id, so a test binary with
// several entries gets each.
func (s *SPIRE) FetchSVID(t testing.TB, id string) tls.Certificate {
	t.Helper()
	want := spiffeid.RequireFromString(id)
	var cert tls.Certificate
	var last error
	eventually.TrueWithin(t, 2*time.Minute, "the SPIRE agent to issue "+id+" to the test binary", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(s.AgentSocket))
		if err != nil {
			last = err
			return false
		}
		for _, sv := range svids {
			if sv.ID != want {
				continue
			}
			cert = tls.Certificate{PrivateKey: sv.PrivateKey, Leaf: sv.Certificates[0]}
			for _, c := range sv.Certificates {
				cert.Certificate = append(cert.Certificate, c.Raw)
			}
			return true
		}
		return false
	})
	if cert.Leaf == nil {
		t.Fatalf("no SVID %s: %v", id, last)
	}
	return cert
}
