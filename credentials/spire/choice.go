package spire

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// errNotSent is what an update without the SVID of WithSPIFFEID's ID
// fails with; waitFirst wraps it in ErrNoSVID.
var errNotSent = errors.New("spire: the Workload API sent no X.509-SVID for the chosen SPIFFE ID")

// choice is how the source picks the SVID it serves when the Workload API
// sends several (one per registration entry that matches the workload,
// in the order of the entries' IDs, which says nothing of which one the
// workload is).
//
// Every comparison is of canonical strings from the agent's answer,
// which go-spiffe has parsed into spiffeid.ID: an ID as ID.String(), a
// path as ID.Path(), a hint byte for byte. The SPIRE agent is the only
// source of the SVIDs compared: they come over its Workload API socket,
// and which of them a peer trusts is decided by the bundles, not here.
type choice struct {
	id   spiffeid.ID // WithSPIFFEID: this one or none
	path string      // WithPreferredPath
	hint string      // WithPreferredHint
}

// The reasons pick gives for its choice, for the log.
const (
	byOption = "the SPIFFE ID option"
	byOnly   = "the only SPIFFE ID"
	byPath   = "the preferred path"
	byHint   = "the preferred hint"
	byKept   = "kept: served before"
	byFirst  = "first: the agent's order"
)

// pick returns the SVID to serve among svids, in the agent's order; why
// it was chosen (one of the by* reasons); and whether several SPIFFE IDs
// remained that no rule told apart (the choice is then ambiguous, kept
// from before when serving is among them, else the first).
//
// The rules, in order: WithSPIFFEID's ID, or an error when it was not
// sent; the one SPIFFE ID sent; the preferred path; the preferred hint;
// serving, the ID served until now, so that a new entry that sorts first
// does not switch the workload's identity; the first.
func (c choice) pick(svids []*x509svid.SVID, serving spiffeid.ID) (svid *x509svid.SVID, by string, ambiguous bool, err error) {
	if !c.id.IsZero() {
		// Compared: the ID's canonical string, exactly.
		want := c.id.String()
		if i := slices.IndexFunc(svids, func(s *x509svid.SVID) bool { return s.ID.String() == want }); i >= 0 {
			return svids[i], byOption, false, nil
		}
		return nil, "", false, fmt.Errorf("%w %s: it sent %s; create an entry for %s whose selectors match this workload, or choose one of those", errNotSent, want, strings.Join(ids(svids), ", "), want)
	}
	if len(svids) == 0 {
		return nil, "", false, errors.New("spire: the Workload API sent no X.509-SVID")
	}
	set, by := svids, byOnly
	for _, rule := range []struct {
		by    string
		match func(*x509svid.SVID) bool
	}{
		// Compared: the ID's path as ID.Path() gives it, exactly.
		{byPath, func(s *x509svid.SVID) bool { return c.path != "" && s.ID.Path() == c.path }},
		// Compared: the hint SPIRE's entry carries, exactly.
		{byHint, func(s *x509svid.SVID) bool { return c.hint != "" && s.Hint == c.hint }},
	} {
		if len(ids(set)) == 1 {
			return set[0], by, false, nil
		}
		if sub := slices.DeleteFunc(slices.Clone(set), func(s *x509svid.SVID) bool { return !rule.match(s) }); len(sub) > 0 {
			set, by = sub, rule.by
		}
	}
	if len(ids(set)) == 1 {
		return set[0], by, false, nil
	}
	// Compared: the served ID's canonical string, exactly.
	if i := slices.IndexFunc(set, func(s *x509svid.SVID) bool { return !serving.IsZero() && s.ID.String() == serving.String() }); i >= 0 {
		return set[i], byKept, true, nil
	}
	return set[0], byFirst, true, nil
}

// ids returns the distinct SPIFFE IDs of svids, in their order.
func ids(svids []*x509svid.SVID) []string {
	var out []string
	for _, s := range svids {
		if id := s.ID.String(); !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}
