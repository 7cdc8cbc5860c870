package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/config"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/internal/spiretest"
	"github.com/meshtrust/meshtrust/pemfile"
)

// spireWait bounds the waits on the real SPIRE: its server polls a
// federated bundle endpoint a few times per refresh hint (1m here), and
// its agent syncs entries and bundles every 5 seconds.
const spireWait = 5 * time.Minute

// spireServer runs spire-server's CLI against s like s.Server, but
// returns a failure rather than failing the test: a refresh may fail
// while the other side is still coming up.
func spireServer(s *spiretest.SPIRE, args ...string) (string, error) {
	bin, err := exec.Command("bash", filepath.Join(repoRoot, "scripts", "spire.sh"), "path").Output()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(strings.TrimSpace(string(bin)), "spire-server"), append(args, "-socketPath", filepath.Join(s.Dir, "server", "api.sock"))...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

// federatedBundle is the bundle the SPIRE server holds for trust domain
// td, as `spire-server bundle list -id` prints it in SPIFFE form.
func federatedBundle(s *spiretest.SPIRE, td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	out, err := spireServer(s, "bundle", "list", "-id", td.IDString(), "-format", "spiffe")
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, out)
	}
	return spiffebundle.Parse(td, []byte(out))
}

// TestBundleEndpointRealSPIRE: a real SPIRE server federates with meshd
// the way it federates with another SPIRE. Given the mesh root and
// meshd's --bundle-endpoint (https_spiffe, endpoint ID
// spiffe://mesh.local/node/meshd), it fetches the mesh bundle (the root
// and the intermediate, where it was given the root alone); a SPIRE
// workload whose entry federates with mesh.local gets that bundle over
// the Workload API and verifies a certificate the mesh CA issued against
// it; after `meshctl ca rotate-intermediate prepare` SPIRE picks up the
// new bundle by polling the endpoint, and a leaf of the new intermediate,
// presented alone, verifies against what the workload then holds.
func TestBundleEndpointRealSPIRE(t *testing.T) {
	s := spiretest.Start(t, "mcp-mesh.local")
	wd := newcomerDir(t)
	addr := freeAddr(t)
	startDev(t, wd, "--bundle-endpoint", addr, "--bundle-endpoint-refresh-hint", "1m")
	td := spiffeid.RequireTrustDomainFromString(config.DefaultTrustDomain)
	root := devRoot(t, wd)
	rootFile, err := filepath.Abs(filepath.Join(wd, "meshtrust-data", "ca", "intermediate", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}

	s.Server(t, "federation", "create", "-trustDomain", td.Name(), "-bundleEndpointURL", "https://"+addr,
		"-bundleEndpointProfile", "https_spiffe", "-endpointSpiffeID", endpointID.String(),
		"-trustDomainBundlePath", rootFile, "-trustDomainBundleFormat", "pem")
	var fetched *spiffebundle.Bundle
	eventually.TrueWithin(t, spireWait, "SPIRE holds the mesh bundle fetched from meshd (root and intermediate)", func() bool {
		// Asked now rather than at SPIRE's next poll; SPIRE's own polling
		// is what the rotation below waits for.
		spireServer(s, "federation", "refresh", "-id", td.Name())
		b, err := federatedBundle(s, td)
		if err != nil || len(b.X509Authorities()) != 2 {
			return false
		}
		fetched = b
		return true
	})
	if !fetched.HasX509Authority(root) {
		t.Fatal("SPIRE's bundle of the mesh lacks the mesh root")
	}

	workload := "spiffe://" + s.TrustDomain + "/federating-workload"
	s.CreateEntryArgs(t, workload, []string{fmt.Sprintf("unix:uid:%d", os.Getuid())}, "-federatesWith", td.IDString())
	// meshBundle is the mesh's bundle as the SPIRE agent hands it to this
	// test process, a workload of the entry above.
	meshBundle := func(want int) []*x509.Certificate {
		var got []*x509.Certificate
		eventually.TrueWithin(t, spireWait, fmt.Sprintf("the Workload API hands out the mesh bundle with %d authorities", want), func() bool {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(s.AgentSocket))
			if err != nil {
				return false
			}
			b, err := xc.Bundles.GetX509BundleForTrustDomain(td)
			if err != nil {
				return false
			}
			got = b.X509Authorities()
			return len(got) == want
		})
		return got
	}
	verify := func(chain []*x509.Certificate, auths []*x509.Certificate) error {
		_, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, auths))
		return err
	}
	auths := meshBundle(2)
	devCtl(t, wd, "ca", "issue-agent", "hello", "dev1")
	chain := issuedChain(t, wd, "hello@dev1")
	if err := verify(chain, auths); err != nil {
		t.Errorf("a mesh agent's certificate does not verify against the bundle SPIRE fetched from meshd: %v", err)
	}
	stranger := []*x509.Certificate{pkitest.NewRoot(t, "stranger").Leaf(t, "hello@dev1", pkitest.URI("spiffe://"+td.Name()+"/agent/dev1/hello"))}
	if err := verify(stranger, auths); err == nil {
		t.Error("a certificate of another CA verified against the mesh bundle")
	}

	// A change of the authorities reaches SPIRE at its next poll of the
	// endpoint, and the workload at the agent's next sync.
	devCtl(t, wd, "ca", "rotate-intermediate", "prepare")
	prepared := time.Now()
	eventually.TrueWithin(t, spireWait, "SPIRE polls meshd and holds the prepared intermediate", func() bool {
		b, err := federatedBundle(s, td)
		return err == nil && len(b.X509Authorities()) == 3
	})
	t.Logf("SPIRE's server held the prepared intermediate %s after the prepare (refresh hint 1m)", time.Since(prepared).Round(time.Second))
	auths = meshBundle(3)
	t.Logf("the workload held it %s after the prepare", time.Since(prepared).Round(time.Second))
	devCtl(t, wd, "ca", "rotate-intermediate", "activate")
	devCtl(t, wd, "ca", "issue-agent", "hello2", "dev1")
	leaf := issuedChain(t, wd, "hello2@dev1")[:1]
	if err := verify(leaf, auths); err != nil {
		t.Errorf("a leaf of the new intermediate, presented alone, does not verify against the workload's mesh bundle: %v", err)
	}
}

// issuedChain is the certificate chain meshctl ca issue-agent wrote for
// cn in meshd --dev's CA directory: the leaf, then its intermediate and
// the root.
func issuedChain(t *testing.T, wd, cn string) []*x509.Certificate {
	t.Helper()
	c := ca.Config{Dir: filepath.Join(wd, "meshtrust-data", "ca")}
	data, err := os.ReadFile(c.IssuedCertPath(cn))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pemfile.ParseCerts(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}
