// Package enroll obtains and renews a node's certificates from meshd, the
// client side of docs/enrollment.md.
//
// A new node generates its key here (GenerateKey), calls Client.Enroll once
// with the bootstrap secret or a join token, and writes what it got to a
// Dir (/etc/meshtrust: node.key, node.crt, ca.crt, agents/). Every later
// call is mTLS with that certificate: Client.AgentCert mints the
// certificates of the node's agents, Client.Renew renews the node and its
// agents together. Keys never leave the node; meshd only sees CSRs.
//
// A Renewer is the live credentials.Source a long-running process builds
// its tls.Config on (credentials.ServerConfig, ClientConfig; AgentSource
// for one of the node's agents): it always returns the current
// certificate, and Run renews it at 2/3 of its lifetime (with jitter),
// retrying with backoff while meshd is unreachable:
//
//	r, err := enroll.NewRenewer(&enroll.Client{Server: url, Roots: roots}, enroll.Dir("/etc/meshtrust"), enroll.RenewerConfig{})
//	...
//	go r.Run(ctx)
//	srv := &http.Server{TLSConfig: credentials.ServerConfig(r, credentials.AuthorizeIdentity("opus@ct111"))}
//
// meshd is trusted through Client.Roots, or on first contact through the
// SHA-256 fingerprint of the mesh root (Client.RootFingerprint).
package enroll
