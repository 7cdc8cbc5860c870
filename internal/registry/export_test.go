package registry

import (
	"context"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/trust"
)

// heartbeatBody is HeartbeatFrom for a caller at no particular source.
func (r *Registry) heartbeatBody(ctx context.Context, peer *trust.Peer, body []byte) (Result, error) {
	return r.HeartbeatFrom(ctx, peer, "", body)
}

// evictSerial evicts every agent registered with the certificate serial.
func (r *Registry) evictSerial(ctx context.Context, serial, reason string) ([]Evicted, error) {
	return r.evict(ctx, func(rec *store.Agent) bool { return rec.CertSerial == serial }, reason)
}
