package ca

import (
	"context"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
)

// IntermediateStatus is one of the CA's intermediates with how many live
// certificates it signed: what `meshctl ca status` and the console show,
// and what decides when a tainted one may be revoked.
type IntermediateStatus struct {
	IntermediateInfo
	// LiveCerts counts the unexpired, unrevoked leaves it signed.
	LiveCerts int
}

// IntermediateStatus lists the CA's intermediates, newest first, each
// with its live certificates. It reads every recorded certificate: an
// operator's question, not a request path's.
func (c *CA) IntermediateStatus(ctx context.Context) ([]IntermediateStatus, error) {
	return intermediateStatus(ctx, c.cfg, c.store)
}

func intermediateStatus(ctx context.Context, cfg Config, st store.Store) ([]IntermediateStatus, error) {
	ints, err := Intermediates(ctx, cfg, st)
	if err != nil {
		return nil, err
	}
	counts, err := liveLeaves(ctx, st, cfg.Now())
	if err != nil {
		return nil, err
	}
	out := make([]IntermediateStatus, 0, len(ints))
	for _, in := range ints {
		out = append(out, IntermediateStatus{IntermediateInfo: in, LiveCerts: counts[in.KeyID]})
	}
	return out, nil
}

// liveLeaves counts the leaves each intermediate signed that are
// unexpired and unrevoked at now, by the issuer key id the CA recorded
// with each certificate (store.Cert.IssuerKeyID), the intermediate's
// subject key id in lowercase hex.
func liveLeaves(ctx context.Context, st store.Store, now time.Time) (map[string]int, error) {
	certs, err := st.Certs(ctx)
	if err != nil {
		return nil, err
	}
	revs, err := st.Revocations(ctx, 0)
	if err != nil {
		return nil, err
	}
	revoked := make(map[string]bool, len(revs))
	for _, r := range revs {
		revoked[r.Serial] = true
	}
	counts := map[string]int{}
	for _, c := range certs {
		if c.Kind != "intermediate" && now.Before(c.NotAfter) && !revoked[c.Serial] {
			counts[c.IssuerKeyID]++
		}
	}
	return counts, nil
}
