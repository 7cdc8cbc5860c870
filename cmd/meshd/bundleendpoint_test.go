package main

import (
	"crypto/x509"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshtrust/meshtrust/internal/bundleendpoint"
	"github.com/meshtrust/meshtrust/internal/config"
	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/pemfile"
)

// TestBundleEndpointFlags: the endpoint is off without an address, and a
// bundle endpoint setting without one, or an unknown profile, is a
// start-up error rather than an endpoint silently not served.
func TestBundleEndpointFlags(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want bundleendpoint.Config
		err  string
	}{
		{name: "off", want: bundleendpoint.Config{}},
		{name: "on", args: []string{"--bundle-endpoint", "127.0.0.1:8443"},
			want: bundleendpoint.Config{Addr: "127.0.0.1:8443", Profile: bundleendpoint.ProfileSPIFFE, RefreshHint: bundleendpoint.DefaultRefreshHint}},
		{name: "web", args: []string{"--bundle-endpoint", ":8443", "--bundle-endpoint-profile", "https_web", "--bundle-endpoint-cert", "c.pem", "--bundle-endpoint-key", "k.pem", "--bundle-endpoint-refresh-hint", "1m"},
			want: bundleendpoint.Config{Addr: ":8443", Profile: bundleendpoint.ProfileWeb, CertFile: "c.pem", KeyFile: "k.pem", RefreshHint: time.Minute}},
		{name: "profile without address", args: []string{"--bundle-endpoint-profile", "https_web"}, err: "--bundle-endpoint (MESHD_BUNDLE_ENDPOINT) is not"},
		{name: "cert without address", args: []string{"--bundle-endpoint-cert", "c.pem"}, err: "--bundle-endpoint (MESHD_BUNDLE_ENDPOINT) is not"},
		{name: "hint without address", args: []string{"--bundle-endpoint-refresh-hint", "1m"}, err: "--bundle-endpoint (MESHD_BUNDLE_ENDPOINT) is not"},
		{name: "unknown profile", args: []string{"--bundle-endpoint", ":8443", "--bundle-endpoint-profile", "http"}, err: "want https_spiffe or https_web"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := &options{}
			cmd := commandFor(o, nil, nil)
			if err := cmd.Flags().Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			got, err := o.bundle.config()
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one saying %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("config %+v, want %+v", got, tt.want)
			}
		})
	}
}

// devRoot is the mesh root meshd --dev created in wd: what a consumer of
// the bundle endpoint is bootstrapped with.
func devRoot(t *testing.T, wd string) *x509.Certificate {
	t.Helper()
	root, err := pemfile.ReadCert(filepath.Join(wd, "meshtrust-data", "ca", "intermediate", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// devCtl runs wd's meshctl on meshd --dev's data dir.
func devCtl(t *testing.T, wd string, args ...string) string {
	t.Helper()
	cmd := exec.Command("./bin/meshctl", append([]string{"--data-dir", "./meshtrust-data"}, args...)...)
	cmd.Dir = wd
	cmd.Env = cleanEnv(filepath.Join(wd, "home"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("meshctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// endpointID is the SPIFFE ID meshd's bundle endpoint serves in the
// trust domain of meshd --dev's CA.
var endpointID = spiffeid.RequireFromString("spiffe://" + config.DefaultTrustDomain + "/node/" + bundleendpoint.Node)

// TestDevBundleEndpoint: meshd --dev --bundle-endpoint serves the mesh
// bundle to a consumer bootstrapped with the mesh root, over
// https_spiffe; `meshctl ca rotate-intermediate prepare`, done offline,
// reaches the document through the change feed with a larger sequence
// number; a meshd without a mesh CA refuses to start with the endpoint.
func TestDevBundleEndpoint(t *testing.T) {
	wd := newcomerDir(t)
	addr := freeAddr(t)
	startDev(t, wd, "--bundle-endpoint", addr, "--bundle-endpoint-refresh-hint", "1m")
	root := devRoot(t, wd)
	td := spiffeid.RequireTrustDomainFromString(config.DefaultTrustDomain)
	fetch := func() (*spiffebundle.Bundle, error) {
		return federation.FetchBundle(t.Context(), td, "https://"+addr, federation.WithSPIFFEAuth(x509bundle.FromX509Authorities(td, []*x509.Certificate{root}), endpointID))
	}
	first, err := fetch()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(first.X509Authorities()); n != 2 || !first.HasX509Authority(root) {
		t.Fatalf("%d authorities, want the root and the intermediate", n)
	}
	if hint, _ := first.RefreshHint(); hint != time.Minute {
		t.Errorf("refresh hint %s, want 1m", hint)
	}
	seq1, _ := first.SequenceNumber()
	devCtl(t, wd, "ca", "rotate-intermediate", "prepare")
	var second *spiffebundle.Bundle
	eventually.NoError(t, "the bundle endpoint serves the prepared intermediate", func() error {
		b, err := fetch()
		if err != nil {
			return err
		}
		if n := len(b.X509Authorities()); n != 3 {
			return fmt.Errorf("%d authorities", n)
		}
		second = b
		return nil
	})
	if seq2, _ := second.SequenceNumber(); seq2 <= seq1 {
		t.Errorf("sequence %d after prepare, was %d: want it to grow", seq2, seq1)
	}

	t.Run("no mesh CA", func(t *testing.T) {
		cmd := exec.Command("./bin/meshd", "--data-dir", "./bare", "--trust-backend", "entities", "--tls-cert", "x", "--tls-key", "y", "--bundle-endpoint", freeAddr(t))
		cmd.Dir = wd
		cmd.Env = cleanEnv(filepath.Join(wd, "home"))
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "has no mesh CA") {
			t.Errorf("meshd without a CA and with --bundle-endpoint: %v\n%s", err, out)
		}
	})
}
