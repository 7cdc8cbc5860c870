package enroll

import (
	"crypto/tls"
	"fmt"
)

// Test access to a Renewer's state. Callers outside the tests use it as a
// credentials.Source (Current, Changed, AgentSource, and
// credentials.ServerConfig or ClientConfig over it).

// Updated returns a channel that receives after the credentials changed
// (changes that follow each other quickly may be reported once). It has
// one receiver; Changed, the credentials.Source form, has any number.
func (r *Renewer) Updated() <-chan struct{} { return r.update }

// Certificate returns the node's current certificate.
func (r *Renewer) Certificate() *tls.Certificate { return &r.state.Load().node.Certificate }

// AgentCertificate returns agent id's current certificate.
func (r *Renewer) AgentCertificate(id string) (*tls.Certificate, bool) {
	c, ok := r.state.Load().agents[id]
	return c, ok
}

// GetCertificate returns the node's current certificate, for a server's
// tls.Config.
func (r *Renewer) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.Certificate(), nil
}

// GetClientCertificate returns the node's current certificate, for a
// client's tls.Config.
func (r *Renewer) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.Certificate(), nil
}

// AgentClientCertificate returns a tls.Config.GetClientCertificate that
// presents agent id's current certificate.
func (r *Renewer) AgentClientCertificate(id string) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		c, ok := r.AgentCertificate(id)
		if !ok {
			return nil, fmt.Errorf("enroll: no certificate for agent %q (mint one with `meshctl agent-cert %s`)", id, id)
		}
		return c, nil
	}
}
