package server

import (
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"
)

// taintSet is the intermediates an operator marked tainted, by subject key
// id (lowercase hex), with when. It is replaced whole, never modified, so
// a request reads it with one atomic load and one map lookup.
type taintSet map[string]time.Time

// ReloadTaint reads the CA's tainted intermediates again: meshd calls it
// once the CA is loaded and after each reload that follows a ca.rotated
// event, before the event reaches the revocation streams, so a stream
// that sees the event sees the new set.
func (s *Server) ReloadTaint() {
	if s.auth == nil {
		return
	}
	t := taintSet(s.auth.TaintedIssuers())
	s.tainted.Store(&t)
}

// taints returns the current set; nil when none is tainted.
func (s *Server) taints() taintSet {
	if t := s.tainted.Load(); t != nil && len(*t) > 0 {
		return *t
	}
	return nil
}

// renewHint sets HeaderRenewAfter on an answer to peer when the mesh CA
// vouched for its certificate and that certificate's issuer is tainted:
// the renewal point RenewAt gives it. While nothing is tainted (every
// day but a compromise) this costs one atomic load.
//
// The name compared is the issuer's key id: peer.IssuerKeyID, the
// lowercase hex authority key id of a leaf whose chain the mesh CA's
// own trust backend verified (peer.MeshCA: only LocalCA sets it), against
// the tainted intermediates' subject key ids in the same form. A partner
// CA's leaf never matches, whatever key id it claims.
func (s *Server) renewHint(w http.ResponseWriter, peer *trust.Peer) {
	t := s.taints()
	if t == nil || peer == nil || !peer.MeshCA || peer.Leaf == nil {
		return
	}
	if _, ok := t[peer.IssuerKeyID]; !ok {
		return
	}
	at := s.auth.RenewAt(peer.IssuerKeyID, peer.Serial, peer.Leaf.NotBefore, peer.Leaf.NotAfter)
	w.Header().Set(meshapi.HeaderRenewAfter, at.UTC().Format(time.RFC3339))
}

// issuedBody is the answer's body for an issued certificate, with the
// renewal point the CA suggests for it.
func (s *Server) issuedBody(is *ca.Issued, withChain bool) meshapi.IssuedCert {
	out := meshapi.IssuedCert{Certificate: string(is.PEM), Serial: is.Record.Serial, NotAfter: is.Cert.NotAfter.UTC()}
	if withChain {
		out.Chain = string(is.ChainPEM)
	}
	if s.auth != nil {
		out.RenewAfter = s.auth.RenewAt(is.Record.IssuerKeyID, is.Record.Serial, is.Cert.NotBefore, is.Cert.NotAfter).UTC()
	}
	return out
}

// taintEvents returns the ca.tainted events of the tainted intermediates
// a revocation stream has not been told of yet (told, which it updates),
// in key id order.
func (s *Server) taintEvents(told map[string]bool) []byte {
	t := s.taints()
	ids := make([]string, 0, len(t))
	for id := range t {
		if !told[id] {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	var b strings.Builder
	for _, id := range ids {
		told[id] = true
		data := jsonValue(meshapi.TaintEvent{IssuerKeyID: id, Time: t[id].UTC()})
		b.WriteString("event: " + meshapi.EventCATainted + "\ndata: " + string(data) + "\n\n")
	}
	return []byte(b.String())
}
