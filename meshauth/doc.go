// Package meshauth is the one middleware every mesh service puts in front
// of its handlers: it answers "is this caller trusted, who is it, may it
// call this?" the same way for net/http, gRPC and MCP over HTTP.
//
// An Auth is built from a trust.Chain (any backends; its RevocationSet is
// the one trust/watch keeps current) and an Authorizer. Each request's
// client certificate is verified against the chain, at most once per
// connection per trust generation; the verified Caller (identity, entity,
// SPIFFE ID, certificate fingerprint, session) is put in the request
// context (FromContext); the Authorizer decides whether the Caller may
// perform the Operation. Authorizers are small values meant to be combined
// (AuthorizeIdentity, AuthorizeNode, AuthorizeEntity, AuthorizeAnyOf, a
// compiled Policy), after go-spiffe's tlsconfig.Authorizer.
//
// Refusals say what to do next: 401 when there is no acceptable identity
// (no certificate, an untrusted or revoked one, a bad session token), 403
// when the identity may not perform the operation, with a machine-readable
// reason; on a JSON-RPC endpoint the body is a JSON-RPC error object too.
// Every decision is counted by outcome and reason and, optionally, logged
// (who, what, which rule) — never a token or a call's arguments.
//
// Names are compared in one canonical form. A request whose HTTP path or
// MCP resource URI is not canonical (a "." or ".." segment, "//", a
// percent-encoded unreserved character or separator such as "%2e" or
// "%2F", an upper-case scheme or host) is refused with 400 and
// ReasonNotCanonical rather than rewritten: a rule then compares the very
// string the handler behind acts on, and no rewriting here could know how
// that handler would have resolved "..". Policy patterns that are not
// canonical are refused at load, since they could never match.
//
// On an MCP endpoint the caller is identified (and refused, when its
// Mcp-Method and Mcp-Name headers name what it may not do) before its
// body is read. resources/subscribe and completion/complete need their
// method allowed and the resource or prompt they name. A list answer
// (tools, prompts, resources, resource templates) goes out only once
// every message in it, JSON or event stream, has been read and filtered.
//
// Session tokens (Sessions) are short-lived JWS tokens bound to the
// client certificate's SHA-256 thumbprint (RFC 8705 cnf/x5t#S256): they
// identify a session inside an already-authenticated mTLS channel and are
// refused on any other certificate.
package meshauth
