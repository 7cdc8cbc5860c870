package spirebundle_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials/spire"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/sourcetest"
	"github.com/meshtrust/meshtrust/internal/spiretest"
	"github.com/meshtrust/meshtrust/trust"
	"github.com/meshtrust/meshtrust/trust/spirebundle"
)

// TestRealSPIREBundlesFollowed: against a real SPIRE server and agent, the
// backend follows the X.509 authority through prepare, activate, taint
// and revoke: a prepared authority is trusted as soon as SPIRE publishes
// it, the workload's SVID moves to the new authority after the taint, and
// the revoke drops the old authority, so an SVID it signed is an unknown
// authority while the new one's verifies. Each change is announced.
func TestRealSPIREBundlesFollowed(t *testing.T) {
	t.Parallel()
	s := spiretest.Start(t, "mcp-mesh.local")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s.CreateEntry(t, "spiffe://mcp-mesh.local/workload", "unix:path:"+exe)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	src, err := spire.New(ctx, spire.WithSocket(s.AgentSocket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	be, err := spirebundle.New(t.Context(), spirebundle.Config{Source: src, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	changes := &atomic.Int64{}
	be.OnChange(func() { changes.Add(1) })
	// The agent's own trust domain is the mesh's own: no partner entity.
	if got := be.Entities(); len(got) != 0 || be.TrustDomain().Name() != "mcp-mesh.local" {
		t.Fatalf("entities %v, own trust domain %s; want none, mcp-mesh.local", got, be.TrustDomain())
	}
	old := sourcetest.Current(t, src).Certificate
	oldChain := []*x509.Certificate{old.Leaf}
	p, err := verify(be, oldChain)
	if err != nil {
		t.Fatal(err)
	}
	if p.SPIFFEID.String() != "spiffe://mcp-mesh.local/workload" {
		t.Errorf("peer SPIFFE ID %s", p.SPIFFEID)
	}

	oldID := s.LocalAuthority(t, "show", "")["active"]
	before := changes.Load()
	nextID := s.LocalAuthority(t, "prepare", "")["prepared_authority"]
	eventually.TrueWithin(t, time.Minute, "the prepared authority in the bundle", func() bool {
		return len(be.Certificates("")) == 2
	})
	s.LocalAuthority(t, "activate", nextID)
	s.LocalAuthority(t, "taint", oldID)
	var fresh []*x509.Certificate
	eventually.TrueWithin(t, 3*time.Minute, "the workload's SVID from the new authority", func() bool {
		c, err := src.Current()
		if err != nil || c.Certificate.Leaf.SerialNumber.Cmp(old.Leaf.SerialNumber) == 0 {
			return false
		}
		fresh = []*x509.Certificate{c.Certificate.Leaf}
		return authorityKeyID(c.Certificate.Leaf) == nextID
	})
	s.LocalAuthority(t, "revoke", oldID)
	eventually.TrueWithin(t, time.Minute, "the revoked authority to leave the bundle", func() bool {
		_, err := verify(be, oldChain)
		return errors.Is(err, trust.ErrUnknownAuthority)
	})
	if _, err := verify(be, fresh); err != nil {
		t.Fatalf("after the revoke, an SVID of the new authority: %v", err)
	}
	if n := changes.Load() - before; n < 2 {
		t.Errorf("%d change notifications for two bundle changes", n)
	}
}

// authorityKeyID is SPIRE's ID of the authority that signed c.
func authorityKeyID(c *x509.Certificate) string { return hex.EncodeToString(c.AuthorityKeyId) }
