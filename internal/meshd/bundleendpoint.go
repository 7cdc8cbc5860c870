package meshd

import (
	"context"
	"errors"

	"github.com/meshtrust/meshtrust/internal/bundleendpoint"
	"github.com/meshtrust/meshtrust/internal/ca"
)

// bundleEndpoint builds the SPIFFE bundle endpoint of
// Config.BundleEndpoint, or returns nil when its address is empty (the
// default: off). It publishes the mesh CA's bundle, so it needs the CA.
func (m *Meshd) bundleEndpoint(ctx context.Context, authority *ca.CA) (*bundleendpoint.Server, error) {
	cfg := m.cfg.BundleEndpoint
	if cfg.Addr == "" {
		return nil, nil
	}
	if authority == nil {
		// Not a nil *ca.CA in the interface: New must see no CA.
		return nil, errors.New("--bundle-endpoint publishes the mesh CA's bundle, and this meshd has no mesh CA (create one with meshctl ca init and issue-intermediate, or start with --dev)")
	}
	if cfg.Logger == nil {
		cfg.Logger = m.log
	}
	return bundleendpoint.New(ctx, cfg, authority)
}

// BundleEndpointAddr returns the SPIFFE bundle endpoint's bound address,
// if it is on.
func (m *Meshd) BundleEndpointAddr() string {
	if m.bundle == nil {
		return ""
	}
	return m.bundle.Addr()
}
