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
	// LiveCerts counts the leaves it signed that are still in use: the
	// newest unexpired, unrevoked certificate of their identity.
	LiveCerts int
	// Superseded counts the unexpired, unrevoked leaves it signed whose
	// identity holds a newer one (renewed away, by the fleet's re-keying
	// among others): valid until they expire, in use by no one.
	Superseded int
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
	live, superseded, err := liveLeaves(ctx, st, cfg.Now())
	if err != nil {
		return nil, err
	}
	out := make([]IntermediateStatus, 0, len(ints))
	for _, in := range ints {
		out = append(out, IntermediateStatus{IntermediateInfo: in, LiveCerts: live[in.KeyID], Superseded: superseded[in.KeyID]})
	}
	return out, nil
}

// liveLeaves counts, by intermediate, the leaves in use (live) and the
// unexpired, unrevoked ones renewed away (superseded). A leaf is in use
// when it is the newest (latest NotAfter, then latest issued) unexpired,
// unrevoked certificate of its identity. The identity compared is the common name
// the CA recorded with each certificate (store.Cert.CommonName), and the
// intermediate the issuer key id it recorded (store.Cert.IssuerKeyID,
// the intermediate's subject key id in lowercase hex): only the CA's own
// records are read, so the CA vouches for both. A tainted intermediate
// may be revoked once none of its leaves is in use: revoking it ends the
// superseded ones too, which no holder relies on.
func liveLeaves(ctx context.Context, st store.Store, now time.Time) (live, superseded map[string]int, err error) {
	certs, err := st.Certs(ctx)
	if err != nil {
		return nil, nil, err
	}
	revs, err := st.Revocations(ctx, 0)
	if err != nil {
		return nil, nil, err
	}
	revoked := make(map[string]bool, len(revs))
	for _, r := range revs {
		revoked[r.Serial] = true
	}
	newest := map[string]store.Cert{}
	var valid []store.Cert
	for _, c := range certs {
		if c.Kind == "intermediate" || !now.Before(c.NotAfter) || revoked[c.Serial] {
			continue
		}
		valid = append(valid, c)
		// Certs lists the oldest first: of two with one NotAfter (a
		// renewal within the second of its predecessor's issuance, as
		// NotAfter has whole seconds), the later issued is the newest.
		if cur, ok := newest[c.CommonName]; !ok || !c.NotAfter.Before(cur.NotAfter) {
			newest[c.CommonName] = c
		}
	}
	live, superseded = map[string]int{}, map[string]int{}
	for _, c := range valid {
		if newest[c.CommonName].Serial == c.Serial {
			live[c.IssuerKeyID]++
		} else {
			superseded[c.IssuerKeyID]++
		}
	}
	return live, superseded, nil
}
