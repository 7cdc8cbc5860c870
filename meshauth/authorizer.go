package meshauth

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Kind is the protocol an Operation arrived by.
type Kind uint8

// The kinds of operation.
const (
	// KindHTTP is an HTTP request: Method and Path.
	KindHTTP Kind = iota + 1
	// KindGRPC is a gRPC call: Path is the full method, "/pkg.Service/Method".
	KindGRPC
	// KindMCP is an MCP JSON-RPC request over HTTP: MCPMethod and, for
	// tools/call, prompts/get and resources/read, Name.
	KindMCP
)

// String returns "http", "grpc" or "mcp".
func (k Kind) String() string {
	switch k {
	case KindHTTP:
		return "http"
	case KindGRPC:
		return "grpc"
	case KindMCP:
		return "mcp"
	}
	return "unknown"
}

// Operation is what a caller asks to do.
type Operation struct {
	Kind Kind
	// Method is the HTTP method (KindHTTP).
	Method string
	// Path is the HTTP path (KindHTTP) or the gRPC full method (KindGRPC).
	Path string
	// MCPMethod is the JSON-RPC method (KindMCP): "tools/call",
	// "tools/list", "initialize", ...
	MCPMethod string
	// Name is the tool or prompt name (tools/call, prompts/get) or the
	// resource URI (resources/read); "" for other MCP methods.
	Name string
}

// String describes the operation for a log line or a refusal, without
// any of the call's arguments.
func (op *Operation) String() string {
	switch op.Kind {
	case KindHTTP:
		return op.Method + " " + op.Path
	case KindGRPC:
		return "grpc " + op.Path
	case KindMCP:
		if op.Name != "" {
			return "mcp " + op.MCPMethod + " " + op.Name
		}
		return "mcp " + op.MCPMethod
	}
	return "unknown operation"
}

// Decision is an Authorizer's answer.
type Decision struct {
	// Allowed reports whether the caller may perform the operation.
	Allowed bool
	// Rule names what decided: a policy rule's name, an authorizer's
	// description, DefaultDeny.
	Rule string
}

// DefaultDeny is the Rule of a refusal no rule allowed.
const DefaultDeny = "default deny"

// An Authorizer decides whether a verified caller may perform an
// operation. Authorizers are small values meant to be combined
// (AuthorizeAnyOf, AuthorizeAllOf) rather than one function with many
// branches; a compiled Policy is one too (Policy.Authorize). They must not
// keep c or op. The vocabulary follows go-spiffe's tlsconfig and is the
// credentials package's too (AuthorizeAny, AuthorizeIdentity,
// AuthorizeMemberOf, AuthorizeAllOf), with meshauth's own AuthorizeNode,
// AuthorizeEntity and AuthorizeAnyOf.
type Authorizer func(c *Caller, op *Operation) Decision

func allow(rule string) Decision { return Decision{Allowed: true, Rule: rule} }

// AuthorizeAny allows every verified caller every operation.
func AuthorizeAny() Authorizer {
	return func(*Caller, *Operation) Decision { return allow("any verified caller") }
}

// AuthorizeIdentity allows callers named one of names ("opus@ct111",
// "ct111.mesh"): a mesh identity only on a certificate of the mesh CA, a
// plain CN (weather-agent) only on one of the mesh's own other CAs, never
// a partner's certificate whatever its CN (see Caller). A partner's
// callers are allowed by AuthorizeEntity, or a Policy's entity:<name>/<cn>.
func AuthorizeIdentity(names ...string) Authorizer {
	names = slices.Clone(names)
	rule := "identity in [" + strings.Join(names, " ") + "]"
	return func(c *Caller, _ *Operation) Decision {
		// Compared: the mesh CA's identity.CommonName, or the exact CN.
		name, ok := c.bareName()
		return Decision{Allowed: ok && slices.Contains(names, name), Rule: rule}
	}
}

// AuthorizeNode allows the agents of node ("*@ct111") and the node itself,
// on certificates of the mesh CA: it alone vouches for a node's names.
func AuthorizeNode(node string) Authorizer {
	rule := "node " + node
	return func(c *Caller, _ *Operation) Decision {
		// Compared: identity.Identity.Node of a mesh CA identity.
		return Decision{Allowed: c.MeshCA && !c.Identity.IsZero() && c.Identity.Node == node, Rule: rule}
	}
}

// AuthorizeEntity allows the callers whose certificate a partner entity's
// CA signed.
func AuthorizeEntity(entity string) Authorizer {
	rule := "entity:" + entity
	return func(c *Caller, _ *Operation) Decision {
		return Decision{Allowed: entity != "" && c.Entity == entity, Rule: rule}
	}
}

// AuthorizeMemberOf allows the callers whose SPIFFE ID is in trust domain
// td and was vouched for by that trust domain's own bundle, or by the mesh
// CA for its own trust domain (Caller.TrustDomain is set only then; a URI
// SAN a partner's CA wrote sets nothing). The zero td allows no caller.
func AuthorizeMemberOf(td spiffeid.TrustDomain) Authorizer {
	rule := "spiffe://" + td.Name()
	return func(c *Caller, _ *Operation) Decision {
		// Compared: the spiffeid.TrustDomain of the vouched SPIFFE ID.
		return Decision{Allowed: !td.IsZero() && c.TrustDomain == td, Rule: rule}
	}
}

// AuthorizeAnyOf allows what any of authorizers allows; the first that
// allows names the rule. With none allowing, the last refusal decides.
func AuthorizeAnyOf(authorizers ...Authorizer) Authorizer {
	all := slices.Clone(authorizers)
	return func(c *Caller, op *Operation) Decision {
		d := Decision{Rule: DefaultDeny}
		for _, a := range all {
			if d = a(c, op); d.Allowed {
				return d
			}
		}
		return d
	}
}

// AuthorizeAllOf allows what every one of authorizers allows; the first
// refusal decides.
func AuthorizeAllOf(authorizers ...Authorizer) Authorizer {
	all := slices.Clone(authorizers)
	return func(c *Caller, op *Operation) Decision {
		d := Decision{Rule: DefaultDeny}
		for _, a := range all {
			if d = a(c, op); !d.Allowed {
				return d
			}
		}
		return d
	}
}

// ParseOperation reads an operation as Operation.String writes it:
// "GET /agents", "grpc /pkg.Service/Method", "mcp tools/call search",
// "mcp initialize".
func ParseOperation(s string) (Operation, error) {
	f := strings.Fields(s)
	switch {
	case len(f) == 2 && f[0] == "grpc":
		return Operation{Kind: KindGRPC, Path: f[1]}, nil
	case len(f) == 2 && f[0] == "mcp":
		return Operation{Kind: KindMCP, MCPMethod: f[1]}, nil
	case len(f) == 3 && f[0] == "mcp":
		// A resource is named by URI, and the middleware serves only a
		// canonical one (authorizeRPC): a model of the check refuses what
		// the middleware would, rather than answer for a name never served.
		if f[1] == "resources/read" || f[1] == "resources/subscribe" {
			if err := canonicalURI(f[2]); err != nil {
				return Operation{}, fmt.Errorf("operation %q: resource %q: %w", s, f[2], err)
			}
		}
		return Operation{Kind: KindMCP, MCPMethod: f[1], Name: f[2]}, nil
	case len(f) == 2 && strings.HasPrefix(f[1], "/") && f[0] == strings.ToUpper(f[0]):
		// The path as a request would send it (escaped); Handler refuses
		// one that is not canonical before any rule is read, and so does
		// its model.
		dec, err := url.PathUnescape(f[1])
		if err != nil {
			return Operation{}, fmt.Errorf("operation %q: %w: %w", s, ErrNotCanonical, err)
		}
		if err := canonicalPath(dec, f[1]); err != nil {
			return Operation{}, fmt.Errorf("operation %q: %w", s, err)
		}
		return Operation{Kind: KindHTTP, Method: f[0], Path: dec}, nil
	}
	return Operation{}, fmt.Errorf("operation %q: want \"METHOD /path\", \"grpc /pkg.Service/Method\" or \"mcp <method> [name]\"", s)
}
