package spire_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/spire"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/internal/sourcetest"
	"github.com/meshtrust/meshtrust/internal/spiretest"
)

// TestRealSPIREFirstSVID: against a real SPIRE server and agent, a
// workload registered by its uid gets its X.509-SVID through the source,
// and the SVID carries its identity as a URI SAN only, with no common
// name (what meshd's default spire binding must admit).
func TestRealSPIREFirstSVID(t *testing.T) {
	s := spiretest.Start(t, "mcp-mesh.local")
	id := "spiffe://mcp-mesh.local/agent/carol"
	s.CreateEntry(t, id, fmt.Sprintf("unix:uid:%d", os.Getuid()))
	// The agent learns of the entry at its next sync (every 5 s).
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	src, err := spire.New(ctx, spire.WithSocket(s.AgentSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	leaf := sourcetest.Current(t, src).Certificate.Leaf
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("SVID URIs %v, want [%s]", leaf.URIs, id)
	}
	if leaf.Subject.CommonName != "" {
		t.Errorf("SPIRE set common name %q on an entry without -dns; the admission tests assume none", leaf.Subject.CommonName)
	}
}

// TestRealSPIREChoice: a real SPIRE agent sends a workload the SVIDs of
// every entry that matches it, ordered by entry ID. Each source serves
// the SVID its rule picks (the preferred path, the preferred hint,
// WithSPIFFEID), and one without a rule keeps the ID it served when an
// entry that sorts first is added; every choice survives the SVIDs'
// rotation; WithSPIFFEID of an ID no entry gives fails New with
// ErrNoSVID naming the IDs the agent did send.
func TestRealSPIREChoice(t *testing.T) {
	s := spiretest.Start(t, "mcp-mesh.local")
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	entry := func(entryID, path string, more ...string) spiffeid.ID {
		id := spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString(s.TrustDomain), path)
		s.CreateEntryArgs(t, id.String(), []string{uid}, append([]string{"-entryID", entryID}, more...)...)
		return id
	}
	// The entry IDs fix the agent's order: carol first, then zed.
	carol := entry("meshtrust-test-2", "/agent/carol")
	zed := entry("meshtrust-test-3", "/agent/zed", "-hint", "zed-hint")
	// The agent learns of entries at its next sync (every 5 s).
	both := func(l *logtest.Buffer) bool {
		return strings.Contains(l.String(), carol.String()) && strings.Contains(l.String(), zed.String())
	}
	newSource := func(opts ...spire.Option) (*spire.Source, *logtest.Buffer) {
		log, buf := logtest.New()
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		src, err := spire.New(ctx, append([]spire.Option{spire.WithSocket(s.AgentSocket), spire.WithLogger(log)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			src.Close()
			if t.Failed() {
				t.Logf("source log:\n%s", buf)
			}
		})
		return src, buf
	}
	byPath, _ := newSource(spire.WithPreferredPath(zed.Path()))
	byHint, _ := newSource(spire.WithPreferredPath("/agent/nobody"), spire.WithPreferredHint("zed-hint"))
	byOption, _ := newSource(spire.WithSPIFFEID(zed), spire.WithPreferredPath(carol.Path()))
	unruled, unruledLog := newSource()
	eventually.True(t, "the unruled source's log naming both SVIDs", func() bool { return both(unruledLog) })

	serves := func(id spiffeid.ID) func(*credentials.Credentials) bool {
		return func(c *credentials.Credentials) bool { return c.Certificate.Leaf.URIs[0].String() == id.String() }
	}
	for _, tc := range []struct {
		name string
		src  *spire.Source
		want spiffeid.ID
	}{{"preferred path", byPath, zed}, {"preferred hint", byHint, zed}, {"WithSPIFFEID", byOption, zed}, {"the agent's first", unruled, carol}} {
		awaitWithin(t, wait, tc.src, tc.name+": "+tc.want.String(), serves(tc.want))
	}

	// An entry that sorts first: the unruled source keeps carol.
	aaa := entry("meshtrust-test-1", "/agent/aaa")
	eventually.True(t, "the unruled source's warning naming the third SVID", func() bool {
		return strings.Count(unruledLog.String(), aaa.String()) > 0
	})
	if c := sourcetest.Current(t, unruled); !serves(carol)(c) {
		t.Fatalf("the unruled source switched to %s when an entry sorting first was added; want %s kept", c.Certificate.Leaf.URIs[0], carol)
	}

	// Rotation (at half of the SVIDs' 2 minutes) keeps every choice.
	for _, tc := range []struct {
		src  *spire.Source
		want spiffeid.ID
	}{{byPath, zed}, {byHint, zed}, {byOption, zed}, {unruled, carol}} {
		before := sourcetest.Current(t, tc.src).Certificate.Leaf
		awaitWithin(t, 4*time.Minute, tc.src, "a rotated SVID of "+tc.want.String(), func(c *credentials.Credentials) bool {
			if c.Certificate.Leaf.Equal(before) {
				return false
			}
			if !serves(tc.want)(c) {
				t.Fatalf("after a rotation the source serves %s, want %s", c.Certificate.Leaf.URIs[0], tc.want)
			}
			return true
		})
	}

	// An ID no entry gives: New waits, then names what it got.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dan := spiffeid.RequireFromPath(carol.TrustDomain(), "/agent/dan")
	_, err := spire.New(ctx, spire.WithSocket(s.AgentSocket), spire.WithSPIFFEID(dan))
	if !errors.Is(err, spire.ErrNoSVID) || !strings.Contains(err.Error(), dan.String()) || !strings.Contains(err.Error(), carol.String()) || !strings.Contains(err.Error(), aaa.String()) {
		t.Fatalf("New with an ID no entry gives: %v; want ErrNoSVID naming %s and the IDs sent", err, dan)
	}
}
