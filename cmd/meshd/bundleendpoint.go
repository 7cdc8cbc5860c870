package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshtrust/meshtrust/internal/bundleendpoint"
)

// bundleEndpointOptions are the flags of the SPIFFE bundle endpoint.
type bundleEndpointOptions struct {
	addr, profile, cert, key string
	refreshHint              time.Duration
}

func (b *bundleEndpointOptions) flags(f *pflag.FlagSet) {
	f.StringVar(&b.addr, "bundle-endpoint", envOr("MESHD_BUNDLE_ENDPOINT", ""), "serve the mesh CA's bundle as a SPIFFE bundle endpoint (GET /, unauthenticated) on this address, for SPIRE deployments that federate with the mesh (default off; env MESHD_BUNDLE_ENDPOINT)")
	f.StringVar(&b.profile, "bundle-endpoint-profile", envOr("MESHD_BUNDLE_ENDPOINT_PROFILE", string(bundleendpoint.ProfileSPIFFE)), "https_spiffe (serve an X.509-SVID of spiffe://<td>/node/meshd that the mesh CA issues and meshd renews) or https_web (serve --bundle-endpoint-cert; env MESHD_BUNDLE_ENDPOINT_PROFILE)")
	f.StringVar(&b.cert, "bundle-endpoint-cert", envOr("MESHD_BUNDLE_ENDPOINT_CERT", ""), "https_web: the bundle endpoint's certificate chain, of a name web PKI roots vouch for, reloaded when it changes (env MESHD_BUNDLE_ENDPOINT_CERT)")
	f.StringVar(&b.key, "bundle-endpoint-key", envOr("MESHD_BUNDLE_ENDPOINT_KEY", ""), "https_web: the bundle endpoint's key (env MESHD_BUNDLE_ENDPOINT_KEY)")
	f.DurationVar(&b.refreshHint, "bundle-endpoint-refresh-hint", bundleendpoint.DefaultRefreshHint, "the bundle's spiffe_refresh_hint: how often consumers are asked to fetch it again (SPIRE polls several times per hint)")
}

// config returns the endpoint's configuration; an empty address is off,
// and then setting another bundle endpoint flag is a mistake worth
// stopping for.
func (b *bundleEndpointOptions) config() (bundleendpoint.Config, error) {
	if b.addr == "" {
		if b.cert != "" || b.key != "" || b.profile != string(bundleendpoint.ProfileSPIFFE) || b.refreshHint != bundleendpoint.DefaultRefreshHint {
			return bundleendpoint.Config{}, errors.New("a --bundle-endpoint-* flag (or MESHD_BUNDLE_ENDPOINT_* variable) is set but --bundle-endpoint (MESHD_BUNDLE_ENDPOINT) is not: give the bundle endpoint's address too")
		}
		return bundleendpoint.Config{}, nil
	}
	p, err := bundleendpoint.ParseProfile(b.profile)
	if err != nil {
		return bundleendpoint.Config{}, fmt.Errorf("--bundle-endpoint-profile: %w", err)
	}
	return bundleendpoint.Config{Addr: b.addr, Profile: p, CertFile: b.cert, KeyFile: b.key, RefreshHint: b.refreshHint}, nil
}
