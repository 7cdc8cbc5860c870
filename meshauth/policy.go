package meshauth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/meshtrust/meshtrust/identity"
)

// A Policy is a compiled allow-list: rules that say who may do what.
// Whatever no rule allows is refused (DefaultDeny). Rules are compiled at
// load into maps keyed by the caller's names, so a decision costs a few
// lookups however many rules there are, and allocates nothing.
//
// The file format (YAML):
//
//	rules:
//	  - name: opus-tools              # names the rule in decisions; unique
//	    who:                          # any of:
//	      - opus@ct111                #   a mesh identity (the mesh CA's certificates only)
//	      - "*@ct112"                 #   a node's agents (the mesh CA's only)
//	      - weather-agent             #   a CN of the mesh's own other CAs (trust dir)
//	      - "entity:partner-corp"     #   a partner entity's certificates
//	      - "entity:partner-corp/ops@dev1" # a CN, or a glob of CNs, of that entity's CA
//	      - "source:filestore/ops@dev1"    # a CN, or a glob of CNs, of one trust source
//	      - "source:spire"            #   every certificate of one trust source
//	      - spiffe://example.org      #   a SPIFFE trust domain (its own bundle only)
//	      - spiffe://example.org/ns/* #   SPIFFE IDs (globs)
//	      - "*"                       #   any verified certificate, partners' included
//	      - anonymous                 #   a caller without one (Config.Anonymous)
//	      - legacy:bearer             #   the legacy bearer path (Config.Legacy)
//	    http: ["GET /agents", "POST /files/**", "* /health"]
//	    grpc: ["/mesh.Runtime/Exec", "/mesh.Status/*"]
//	    mcp:
//	      methods: [initialize, ping, "notifications/*", tools/list]
//	      tools: ["search_*", read_file]     # tools/call params.name
//	      resources: ["file:///docs/**"]     # resources/read params.uri
//	      prompts: [summarize]               # prompts/get params.name
//
// A principal is met only by a certificate whose trust source may vouch
// for it (docs/identity-binding.md, "meshauth"): a mesh identity, a node,
// *@node and a glob of identities by the mesh CA alone; a SPIFFE ID by
// the mesh CA for its own trust domain or by that trust domain's own
// bundle; a partner's certificate only by the entity:, source: and "*"
// principals, which name where it comes from.
//
// In patterns '*' matches any run of characters other than '/', "**" any
// run at all. tools/call, prompts/get and resources/read are allowed only
// by tools, prompts and resources, never by methods; resources/subscribe
// and completion/complete need their method and also the resource or
// prompt they name. Paths and resource URIs are compared in their
// canonical form only (ErrNotCanonical): a pattern that is not canonical
// is refused at load, a request naming a non-canonical one is refused.
type Policy struct {
	rules []rule

	names, agentsOf, entities, spiffeIDs, domains map[string][]int
	nodeGlobs, domainGlobs                        map[string][]whoGlob
	looseNames, looseEntities                     []whoGlob
	any, anonymous, legacy                        []int
	// sources indexes source:<backend>; qualified the CN patterns of
	// entity:<name>/<cn> and source:<backend>/<cn>, keyed by
	// "entity:<name>" or "source:<backend>".
	sources   map[string][]int
	qualified map[string][]whoGlob
}

type whoGlob struct {
	g    glob
	rule int
}

// rule is one compiled rule.
type rule struct {
	name string
	line int
	// http holds the path patterns per method, "*" for any method.
	http                              map[string]*nameSet
	grpc                              nameSet
	methods, tools, resources, prompt nameSet
}

// PolicyError is why a policy was refused: where, and what is wrong.
type PolicyError struct {
	File string
	Line int
	// Rule is the rule's name, or "#<n>" (1-based) for a rule without
	// one; "" for an error outside the rules.
	Rule string
	Err  error
}

func (e *PolicyError) Error() string {
	var b strings.Builder
	b.WriteString(cmpStr(e.File, "policy"))
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Rule != "" {
		fmt.Fprintf(&b, ": rule %s", e.Rule)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

func (e *PolicyError) Unwrap() error { return e.Err }

// ErrPolicy is wrapped by every PolicyError's Err.
var ErrPolicy = errors.New("invalid policy")

func cmpStr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// maxPolicy bounds a policy document.
const maxPolicy = 16 << 20

// ParsePolicy compiles a policy document; file names it in errors.
func ParsePolicy(file string, data []byte) (*Policy, error) {
	perr := func(line int, rule string, format string, args ...any) error {
		return &PolicyError{File: file, Line: line, Rule: rule, Err: fmt.Errorf("%w: %s", ErrPolicy, fmt.Sprintf(format, args...))}
	}
	if len(data) > maxPolicy {
		return nil, perr(0, "", "the document is larger than %d bytes", maxPolicy)
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, perr(0, "", "the document is empty; a policy needs a rules list (an empty list denies everything)")
		}
		return nil, perr(yamlLine(err), "", "%v", err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); err == nil {
		return nil, perr(more.Line, "", "a second YAML document; a policy is one document")
	}
	top := &doc
	if top.Kind == yaml.DocumentNode && len(top.Content) == 1 {
		top = top.Content[0]
	}
	if top.Kind != yaml.MappingNode {
		return nil, perr(top.Line, "", "the document must be a mapping with a rules list")
	}
	p := newPolicy()
	var rulesNode *yaml.Node
	if err := eachKey(top, func(k, v *yaml.Node) error {
		switch k.Value {
		case "rules":
			rulesNode = v
		case "version":
			if v.Value != "1" {
				return perr(v.Line, "", "version %q: this meshauth reads version 1", v.Value)
			}
		default:
			return perr(k.Line, "", "unknown key %q (want rules, version)", k.Value)
		}
		return nil
	}, perr, ""); err != nil {
		return nil, err
	}
	if rulesNode == nil {
		return nil, perr(top.Line, "", "no rules list (an empty list, rules: [], denies everything)")
	}
	if rulesNode.Kind != yaml.SequenceNode {
		return nil, perr(rulesNode.Line, "", "rules must be a list")
	}
	seen := map[string]int{}
	for i, rn := range rulesNode.Content {
		label := fmt.Sprintf("#%d", i+1)
		r, who, err := parseRule(rn, label, perr)
		if err != nil {
			return nil, err
		}
		if prev, dup := seen[r.name]; dup {
			return nil, perr(rn.Line, fmt.Sprintf("%q", r.name), "the name is already used by the rule at line %d", prev)
		}
		seen[r.name] = rn.Line
		p.rules = append(p.rules, r)
		for _, w := range who {
			if err := p.addWho(w.Value, len(p.rules)-1); err != nil {
				return nil, perr(w.Line, fmt.Sprintf("%q", r.name), "who %q: %v", w.Value, err)
			}
		}
	}
	return p, nil
}

func newPolicy() *Policy {
	return &Policy{names: map[string][]int{}, agentsOf: map[string][]int{}, entities: map[string][]int{},
		spiffeIDs: map[string][]int{}, domains: map[string][]int{}, nodeGlobs: map[string][]whoGlob{}, domainGlobs: map[string][]whoGlob{},
		sources: map[string][]int{}, qualified: map[string][]whoGlob{}}
}

type perrFunc func(line int, rule string, format string, args ...any) error

// yamlLine digs the line out of a yaml.v3 error ("yaml: line 3: ...").
func yamlLine(err error) int {
	var n int
	s := err.Error()
	if i := strings.Index(s, "line "); i >= 0 {
		fmt.Sscanf(s[i+5:], "%d", &n)
	}
	return n
}

// eachKey calls fn for each key of a mapping, refusing duplicate keys.
func eachKey(m *yaml.Node, fn func(k, v *yaml.Node) error, perr perrFunc, rule string) error {
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return perr(k.Line, rule, "keys must be plain names")
		}
		if seen[k.Value] {
			return perr(k.Line, rule, "key %q appears twice", k.Value)
		}
		seen[k.Value] = true
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

// strings returns the items of a list of strings.
func stringList(n *yaml.Node, what string, perr perrFunc, rule string) ([]*yaml.Node, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, perr(n.Line, rule, "%s must be a list of strings", what)
	}
	for _, it := range n.Content {
		if it.Kind != yaml.ScalarNode || it.Tag != "!!str" && it.Tag != "" {
			return nil, perr(it.Line, rule, "%s: every item must be a string (quote it)", what)
		}
		if strings.TrimSpace(it.Value) != it.Value || it.Value == "" {
			return nil, perr(it.Line, rule, "%s: %q: empty, or surrounded by spaces", what, it.Value)
		}
	}
	return n.Content, nil
}

func parseRule(rn *yaml.Node, label string, perr perrFunc) (rule, []*yaml.Node, error) {
	r := rule{line: rn.Line}
	if rn.Kind != yaml.MappingNode {
		return r, nil, perr(rn.Line, label, "a rule must be a mapping (name, who, http, grpc, mcp)")
	}
	for i := 0; i+1 < len(rn.Content); i += 2 {
		if rn.Content[i].Value == "name" {
			if v := rn.Content[i+1]; v.Kind == yaml.ScalarNode && v.Value != "" {
				r.name = v.Value
				label = fmt.Sprintf("%q", v.Value)
			}
		}
	}
	if r.name == "" {
		return r, nil, perr(rn.Line, label, "needs a name, so that decisions can say which rule decided")
	}
	var who []*yaml.Node
	grants := 0
	err := eachKey(rn, func(k, v *yaml.Node) error {
		var err error
		switch k.Value {
		case "name":
		case "who":
			who, err = stringList(v, "who", perr, label)
		case "http":
			grants++
			err = r.parseHTTP(v, perr, label)
		case "grpc":
			grants++
			err = r.parseNames(&r.grpc, v, "grpc", perr, label, checkGRPC)
		case "mcp":
			grants++
			err = r.parseMCP(v, perr, label)
		default:
			err = perr(k.Line, label, "unknown key %q (want name, who, http, grpc, mcp)", k.Value)
		}
		return err
	}, perr, label)
	if err != nil {
		return r, nil, err
	}
	if len(who) == 0 {
		return r, nil, perr(rn.Line, label, "needs who: the callers it allows")
	}
	if grants == 0 {
		return r, nil, perr(rn.Line, label, "allows nothing: add http, grpc or mcp")
	}
	return r, who, nil
}

func (r *rule) parseNames(set *nameSet, v *yaml.Node, what string, perr perrFunc, label string, check func(string) error) error {
	items, err := stringList(v, what, perr, label)
	if err != nil {
		return err
	}
	for _, it := range items {
		if check != nil {
			if err := check(it.Value); err != nil {
				return perr(it.Line, label, "%s %q: %v", what, it.Value, err)
			}
		}
		if err := set.add(it.Value); err != nil {
			return perr(it.Line, label, "%s: %v", what, err)
		}
	}
	return nil
}

func checkGRPC(s string) error {
	if !strings.HasPrefix(s, "/") || strings.Count(s, "/") != 2 {
		return errors.New(`want a full method "/package.Service/Method" (globs allowed: "/package.Service/*")`)
	}
	return nil
}

func (r *rule) parseHTTP(v *yaml.Node, perr perrFunc, label string) error {
	items, err := stringList(v, "http", perr, label)
	if err != nil {
		return err
	}
	for _, it := range items {
		method, path, ok := strings.Cut(it.Value, " ")
		if !ok || !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t") {
			return perr(it.Line, label, "http %q: want \"METHOD /path\" (METHOD may be *; the path may hold globs)", it.Value)
		}
		if method != "*" && (method != strings.ToUpper(method) || strings.ContainsAny(method, "*/")) {
			return perr(it.Line, label, "http %q: the method must be uppercase (GET, POST, ...) or *", it.Value)
		}
		if r.http == nil {
			r.http = map[string]*nameSet{}
		}
		set := r.http[method]
		if set == nil {
			set = &nameSet{}
			r.http[method] = set
		}
		// Requests are matched only once canonical (Handler), so a pattern
		// that is not could never match: say so at load.
		if err := canonicalPath(path, path); err != nil {
			return perr(it.Line, label, "http %q: %v", it.Value, err)
		}
		if err := set.add(path); err != nil {
			return perr(it.Line, label, "http: %v", err)
		}
	}
	return nil
}

func (r *rule) parseMCP(v *yaml.Node, perr perrFunc, label string) error {
	if v.Kind != yaml.MappingNode {
		return perr(v.Line, label, "mcp must be a mapping (methods, tools, resources, prompts)")
	}
	return eachKey(v, func(k, v *yaml.Node) error {
		switch k.Value {
		case "methods":
			return r.parseNames(&r.methods, v, "mcp.methods", perr, label, func(s string) error {
				if _, named := nameParam[s]; named {
					return fmt.Errorf("%s is allowed per name: use mcp.%s", s, map[string]string{"tools/call": "tools", "prompts/get": "prompts", "resources/read": "resources"}[s])
				}
				return nil
			})
		case "tools":
			return r.parseNames(&r.tools, v, "mcp.tools", perr, label, nil)
		case "resources":
			return r.parseNames(&r.resources, v, "mcp.resources", perr, label, func(s string) error {
				// A resource URI is matched only once canonical (MCP).
				if _, err := url.Parse(s); err != nil && isGlob(s) {
					return nil // a glob in the host: nothing to resolve there
				}
				return canonicalURI(s)
			})
		case "prompts":
			return r.parseNames(&r.prompt, v, "mcp.prompts", perr, label, nil)
		}
		return perr(k.Line, label, "unknown key mcp.%s (want methods, tools, resources, prompts)", k.Value)
	}, perr, label)
}

// addWho indexes one who pattern for rule i.
func (p *Policy) addWho(w string, i int) error {
	switch {
	case w == "*":
		p.any = append(p.any, i)
	case w == AnonymousName:
		p.anonymous = append(p.anonymous, i)
	case w == LegacyName:
		p.legacy = append(p.legacy, i)
	case strings.HasPrefix(w, "entity:") && strings.Contains(w, "/"),
		strings.HasPrefix(w, "source:"):
		return p.addQualified(w, i)
	case strings.HasPrefix(w, "entity:"):
		e := strings.TrimPrefix(w, "entity:")
		if isGlob(e) {
			g, err := compileGlob(e)
			if err != nil {
				return err
			}
			p.looseEntities = append(p.looseEntities, whoGlob{g, i})
			return nil
		}
		if err := identity.ValidateID(e); err != nil {
			return fmt.Errorf("entity name: %w", err)
		}
		p.entities[e] = append(p.entities[e], i)
	case strings.HasPrefix(w, "spiffe://"):
		rest := strings.TrimPrefix(w, "spiffe://")
		td, path, hasPath := strings.Cut(rest, "/")
		if td == "" || isGlob(td) || strings.ToLower(td) != td {
			return errors.New("want spiffe://<trust domain>[/path]: the trust domain is lowercase and cannot be a glob")
		}
		switch {
		case !hasPath || path == "":
			p.domains[td] = append(p.domains[td], i)
		case isGlob(path):
			g, err := compileGlob(w)
			if err != nil {
				return err
			}
			p.domainGlobs[td] = append(p.domainGlobs[td], whoGlob{g, i})
		default:
			p.spiffeIDs[w] = append(p.spiffeIDs[w], i)
		}
	case isGlob(w):
		g, err := compileGlob(w)
		if err != nil {
			return err
		}
		if agent, node, ok := strings.Cut(w, "@"); ok && !isGlob(node) {
			if err := identity.ValidateID(node); err != nil {
				return fmt.Errorf("node: %w", err)
			}
			if agent == "*" {
				p.agentsOf[node] = append(p.agentsOf[node], i)
			} else {
				p.nodeGlobs[node] = append(p.nodeGlobs[node], whoGlob{g, i})
			}
			return nil
		}
		p.looseNames = append(p.looseNames, whoGlob{g, i})
	default:
		if strings.ContainsAny(w, "@") || strings.HasSuffix(w, identity.NodeSuffix) {
			if _, err := identity.Parse(w); err != nil {
				return err
			}
		} else if strings.ContainsAny(w, " \t:/") {
			return errors.New("not an identity, *@node, entity:<name>, spiffe://..., *, anonymous or legacy:bearer")
		}
		p.names[w] = append(p.names[w], i)
	}
	return nil
}

// addQualified indexes a principal that names where its certificates come
// from: entity:<name>/<cn>, source:<backend> or source:<backend>/<cn>,
// the <cn> exact or a glob. The entity or backend is exact: it is the
// trust source the rule is written for.
func (p *Policy) addQualified(w string, i int) error {
	kind, rest, _ := strings.Cut(w, ":")
	src, cn, hasCN := strings.Cut(rest, "/")
	if err := identity.ValidateID(src); err != nil {
		return fmt.Errorf("want %s:<%s>[/<common name or glob>], the %s exact: %w", kind, map[string]string{"entity": "entity name", "source": "trust backend"}[kind], kind, err)
	}
	if !hasCN {
		p.sources[src] = append(p.sources[src], i)
		return nil
	}
	if cn == "" || strings.ContainsAny(cn, " \t") {
		return fmt.Errorf("want %s:%s/<common name or glob>", kind, src)
	}
	g, err := compileGlob(cn)
	if err != nil {
		return err
	}
	key := kind + ":" + src
	p.qualified[key] = append(p.qualified[key], whoGlob{g, i})
	return nil
}

// Rules returns the number of rules.
func (p *Policy) Rules() int { return len(p.rules) }

// Authorize is the policy as an Authorizer: the first rule (in file
// order) that names the caller and grants the operation allows it;
// without one, DefaultDeny.
func (p *Policy) Authorize(c *Caller, op *Operation) Decision {
	best := -1
	try := func(rules []int) {
		for _, i := range rules {
			if best >= 0 && i >= best {
				return // rules are indexed in order: no later one can win
			}
			if p.rules[i].grants(op) {
				best = i
				return
			}
		}
	}
	tryGlobs := func(gs []whoGlob, s string) {
		for k := range gs {
			if (best < 0 || gs[k].rule < best) && gs[k].g.match(s) && p.rules[gs[k].rule].grants(op) {
				best = gs[k].rule
			}
		}
	}
	switch {
	case c.Legacy:
		try(p.legacy)
	case c.Anonymous:
		try(p.anonymous)
	default:
		try(p.any)
		// Plain names (opus@ct111, ct111.mesh, weather-agent, globs of
		// them): the mesh CA's identity, compared as its CommonName, or a
		// CN of the mesh's own other CAs that is not shaped like one;
		// never a partner's CN (Caller.bareName).
		if name, ok := c.bareName(); ok {
			try(p.names[name])
			tryGlobs(p.looseNames, name)
		}
		// *@node, <glob>@node: the node of an agent identity the mesh CA
		// vouched for, compared as identity.Identity.Node.
		if c.MeshCA && c.Identity.Kind == identity.KindAgent {
			try(p.agentsOf[c.Identity.Node])
			tryGlobs(p.nodeGlobs[c.Identity.Node], c.Name)
		}
		// entity:<name>[/<cn>]: the name the partner's CA was registered
		// under (never an O it wrote), then its certificate's CN as is.
		if c.Entity != "" {
			try(p.entities[c.Entity])
			tryGlobs(p.looseEntities, c.Entity)
			tryGlobs(p.qualified["entity:"+c.Entity], c.Name)
		}
		// source:<backend>[/<cn>]: the backend that admitted the chain.
		if c.Source != "" {
			try(p.sources[c.Source])
			tryGlobs(p.qualified["source:"+c.Source], c.Name)
		}
		// spiffe://...: an ID the mesh CA (its own trust domain) or the
		// ID's own trust domain's bundle vouched for, as
		// spiffeid.ID.String writes it.
		if c.SPIFFEID != "" {
			try(p.spiffeIDs[c.SPIFFEID])
			try(p.domains[c.TrustDomain.Name()])
			tryGlobs(p.domainGlobs[c.TrustDomain.Name()], c.SPIFFEID)
		}
	}
	if best < 0 {
		return Decision{Rule: DefaultDeny}
	}
	return Decision{Allowed: true, Rule: p.rules[best].name}
}

// grants reports whether the rule allows op, whoever the caller.
func (r *rule) grants(op *Operation) bool {
	switch op.Kind {
	case KindHTTP:
		if s := r.http[op.Method]; s != nil && s.match(op.Path) {
			return true
		}
		s := r.http["*"]
		return s != nil && s.match(op.Path)
	case KindGRPC:
		return r.grpc.match(op.Path)
	case KindMCP:
		switch op.MCPMethod {
		case "tools/call":
			return r.tools.match(op.Name)
		case "prompts/get":
			return r.prompt.match(op.Name)
		case "resources/read":
			return r.resources.match(op.Name)
		}
		return r.methods.match(op.MCPMethod)
	}
	return false
}
