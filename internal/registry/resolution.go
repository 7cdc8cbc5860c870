package registry

import (
	"crypto/sha256"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/Masterminds/semver/v3"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
)

// resolutionCache holds the provider chosen for every dependency looked
// up at one value of the topology counter. It is shared by every agent
// and every list, so a dependency's providers are looked for once per
// topology change, however many agents declare it and however often they
// are listed.
//
// It also holds the whole resolution of every set of tools it resolved
// for a party: agents that declare the same tools (a toolSet) and belong
// to the same party resolve alike, so they share one resolution rather
// than holding a copy each.
type resolutionCache struct {
	topo uint64
	mu   sync.Mutex // a leaf, like Registry.mu
	deps map[depKey]meshapi.Resolution
	sets map[setKey]setResolution
}

// setKey is a set of tools resolved for the agents of a party.
type setKey struct {
	tools    *toolSet
	consumer party
}

// setResolution is the resolution of a setKey, shared by every agent with
// that key: never modified.
type setResolution struct {
	// res maps each tool to the providers of its dependencies, and
	// available is how many of them resolved.
	res       map[string][]meshapi.Resolution
	available int
	// list is res as GET /agents lists it, in the order the dependencies
	// are declared.
	list []DependencyResolution
	// json is res as JSON (json.Marshal's), encoded once for every
	// heartbeat answer that carries it.
	json []byte
	// sum is json's SHA-256: what an entry keeps of the answer its agent
	// last received (entry.sent), so that HEAD can tell whether a POST
	// would answer anything else now. The providers' endpoints, ids and
	// function names in json are chosen by other agents (partners',
	// certless callers'), so the digest must be one nobody can collide:
	// two answers that differ with the same digest would let a provider
	// change what a dependent calls without the dependent being told.
	// SHA-256 is collision resistant without a key, so there is no
	// secret to hold; it is computed once per set per topology value,
	// shared by every agent of the set, never per HEAD. A digest rather
	// than the answer itself: 32 bytes per agent, and no old answer kept
	// alive by the agents that have not POSTed since.
	sum [sha256.Size]byte
}

// depKey is a dependency as resolution sees it: what it asks for, and
// the agent that asks, whose party decides whose providers it may use.
type depKey struct {
	capability, namespace, tags, version string
	consumer                             party
}

// party is who an agent's owner is, as resolution's trust boundary sees
// it: the entity of its certificate ("" for the mesh's own CAs), or no
// certificate at all.
type party struct {
	entity string
	// anonymous is set for an agent registered without a certificate
	// (TLS off, or a caller without one in auto).
	anonymous bool
}

func partyOf(rec *store.Agent) party {
	return party{entity: rec.Entity, anonymous: rec.Owner == ""}
}

func newResolutionCache(topo uint64) *resolutionCache {
	return &resolutionCache{topo: topo, deps: make(map[depKey]meshapi.Resolution), sets: make(map[setKey]setResolution)}
}

// cacheAt returns the resolution cache of topology value topo.
func (r *Registry) cacheAt(topo uint64) *resolutionCache {
	for {
		c := r.cache.Load()
		switch {
		case c != nil && c.topo == topo:
			return c
		case c != nil && c.topo > topo:
			// The caller read the topology before a change: what it
			// computes is stale already and is not kept.
			return newResolutionCache(topo)
		}
		n := newResolutionCache(topo)
		if r.cache.CompareAndSwap(c, n) {
			return n
		}
	}
}

// receipt says what a resolution is computed for, as it bears on what
// the agent has received (entry.sent).
type receipt uint8

const (
	// listed: GET /agents; the agent receives nothing.
	listed receipt = iota
	// answered: a POST answer carries the resolution to the agent.
	answered
	// compared: a HEAD asks whether a POST would answer another
	// resolution than the one the agent last received.
	compared
)

// resolveFor returns e's dependency resolution for a POST answer, and
// records it as what e's agent received.
func (r *Registry) resolveFor(e *entry) (map[string][]meshapi.Resolution, []byte) {
	set, _ := r.resolutionFor(e, answered)
	return set.res, set.json
}

// resolution returns e's dependency resolution, computed again only when
// the topology moved since e's was cached.
func (r *Registry) resolution(e *entry) setResolution {
	set, _ := r.resolutionFor(e, listed)
	return set
}

// resolutionFor returns e's dependency resolution at the current
// topology and records what how says (see entry.receive), whose answer
// it returns. The topology is read before anything is resolved: every
// change it counts is indexed by then, so the resolution holds it
// (cacheAt); a later change, counted after, is found by the next call.
func (r *Registry) resolutionFor(e *entry, how receipt) (setResolution, bool) {
	topo := r.topology.Load()
	e.mu.Lock()
	if e.resolved.res != nil && e.resolvedAt == topo {
		set := e.resolved
		same := e.receive(set, topo, how)
		e.mu.Unlock()
		return set, same
	}
	reg, key := e.reg, setKey{tools: e.tools, consumer: partyOf(&e.rec)}
	e.mu.Unlock()
	c := r.cacheAt(topo)
	c.mu.Lock()
	set, ok := c.sets[key]
	c.mu.Unlock()
	if !ok || key.tools == nil {
		set.res, set.available = r.resolve(reg, key.consumer, c)
		set.list = dependencyResolutions(reg, set.res)
		set.json = resolutionJSON(set.res)
		set.sum = sha256.Sum256(set.json)
		if key.tools != nil {
			set = key.tools.reuse(key.consumer, set)
			c.mu.Lock()
			c.sets[key] = set
			c.mu.Unlock()
		}
	}
	e.mu.Lock()
	if e.resolved.res == nil || e.resolvedAt < topo {
		e.resolved, e.resolvedAt = set, topo
	}
	same := e.receive(set, topo, how)
	e.mu.Unlock()
	return set, same
}

// receive records set, e's resolution at topology value topo, as how
// says, and reports for compared whether it is the one e's agent last
// received. The caller holds e.mu.
//
// answered: the POST answer carries set, so it is what the agent holds,
// current up to topo. Of two POSTs of one agent racing, the one that
// records last is taken for the one received; if it is the older, the
// next HEAD compares again and says 202 if that was wrong.
//
// compared: when set is what the agent holds, its answer is current up
// to topo (topoSeen moves forward, never back); when not, nothing
// changes, and HEAD answers 202 until a POST records the new answer.
func (e *entry) receive(set setResolution, topo uint64, how receipt) bool {
	switch how {
	case answered:
		e.sent, e.topoSeen = set.sum, topo
	case compared:
		if set.sum != e.sent {
			return false
		}
		e.topoSeen = max(e.topoSeen, topo)
	}
	return true
}

// resolutionJSON is json.Marshal of res. A resolution holds strings,
// numbers and booleans only, so it cannot fail; if it ever did, the
// answer would say null, as for no resolution.
func resolutionJSON(res map[string][]meshapi.Resolution) []byte {
	b, err := json.Marshal(res)
	if err != nil {
		return []byte("null")
	}
	return b
}

// setRegistration sets e's registration and the sorted tags resolution
// matches against. The caller holds e.mu.
func (e *entry) setRegistration(reg meshapi.Registration) {
	e.reg, e.tools = compact(reg)
}

// toolTags returns the sorted tags of e's tools (see toolSet), nil before
// e has a registration. The caller holds e.mu.
func (e *entry) toolTags() [][]string {
	if e.tools == nil {
		return nil
	}
	return e.tools.tags
}

// toolTags returns the sorted tags of tool i of reg, whose entry holds
// tags.
func toolTags(reg *meshapi.Registration, tags [][]string, i int) []string {
	if tags != nil {
		return tags[i]
	}
	return reg.Tools[i].Tags
}

// index moves e in the capability index from old's tools to its current
// ones. The caller holds r.mu for writing.
func (r *Registry) index(e *entry, old *meshapi.Registration) {
	if old != nil {
		r.unindex(e, old)
	}
	for _, t := range e.reg.Tools {
		if t.Capability == "" {
			continue
		}
		m := r.providers[t.Capability]
		if m == nil {
			m = make(map[string]*entry)
			r.providers[t.Capability] = m
		}
		m[e.reg.AgentID] = e
	}
}

func (r *Registry) unindex(e *entry, old *meshapi.Registration) {
	for _, t := range old.Tools {
		if m := r.providers[t.Capability]; m != nil && m[old.AgentID] == e {
			delete(m, old.AgentID)
			if len(m) == 0 {
				delete(r.providers, t.Capability)
			}
		}
	}
}

// resolve picks a provider for every dependency of every tool of reg, an
// agent of consumer's, and returns them with how many it found.
func (r *Registry) resolve(reg meshapi.Registration, consumer party, c *resolutionCache) (map[string][]meshapi.Resolution, int) {
	out := make(map[string][]meshapi.Resolution, len(reg.Tools))
	for _, t := range reg.Tools {
		if len(t.Dependencies) == 0 {
			continue
		}
		res := make([]meshapi.Resolution, 0, len(t.Dependencies))
		for _, d := range t.Dependencies {
			res = append(res, r.lookupDependency(d, consumer, c))
		}
		out[t.FunctionName] = res
	}
	n := 0
	for _, res := range out {
		for _, x := range res {
			if x.Status == "available" {
				n++
			}
		}
	}
	return out, n
}

// lookupDependency returns the provider of d for an agent of consumer's,
// from c or, the first time, from the capability index.
func (r *Registry) lookupDependency(d meshapi.Dependency, consumer party, c *resolutionCache) meshapi.Resolution {
	want := sortedTags(d.Tags)
	k := depKey{capability: d.Capability, namespace: d.Namespace, tags: tagsKey(want), version: d.Version, consumer: consumer}
	if k.namespace == "" {
		k.namespace = "default"
	}
	c.mu.Lock()
	res, ok := c.deps[k]
	c.mu.Unlock()
	if ok {
		return res
	}
	res = r.provider(k.capability, k.namespace, want, d.Version, consumer)
	c.mu.Lock()
	c.deps[k] = res
	c.mu.Unlock()
	return res
}

// provider picks a healthy provider, one the consumer may use, whose
// tool offers capability in namespace ns, matches want (sorted) with MCP
// Mesh's tag operators ("tag" required, "-tag" excluded, "+tag"
// preferred) and whose version satisfies the constraint (MCP Mesh's
// semver constraints; none: any version). The provider with the most
// preferred tags wins, then the highest version, then the lowest agent
// id, so answers are stable.
func (r *Registry) provider(capability, ns string, want []string, constraint string, consumer party) meshapi.Resolution {
	if r.hooks.resolve != nil {
		r.hooks.resolve(capability)
	}
	q, vq := parseTags(want), parseConstraint(constraint)
	// An unresolved dependency keeps the capability it asked for, as in
	// MCP Mesh; the provider's fields stay empty.
	best, bestScore := meshapi.Resolution{Capability: capability, Status: "unresolved"}, -1
	var bestVersion *semver.Version
	r.mu.RLock()
	cands := make([]*entry, 0, len(r.providers[capability]))
	for _, e := range r.providers[capability] {
		cands = append(cands, e)
	}
	r.mu.RUnlock()
	for _, e := range cands {
		e.mu.Lock()
		status, owner, reg, tags, gone := e.rec.Status, partyOf(&e.rec), e.reg, e.toolTags(), e.gone
		e.mu.Unlock()
		if gone || status != StatusHealthy || namespace(reg) != ns || !r.mayProvide(owner, consumer) {
			continue
		}
		for i, t := range reg.Tools {
			if t.Capability != capability {
				continue
			}
			score, ok := q.match(toolTags(&reg, tags, i))
			if !ok || score < bestScore {
				continue
			}
			v, ok := vq.match(t.Version)
			if !ok {
				continue
			}
			if score == bestScore {
				if c := compareVersions(v, bestVersion); c < 0 || (c == 0 && reg.AgentID >= best.AgentID) {
					continue
				}
			}
			best, bestScore, bestVersion = meshapi.Resolution{AgentID: reg.AgentID, Capability: t.Capability, Endpoint: r.endpoint(reg), FunctionName: t.FunctionName, Status: "available"}, score, v
		}
	}
	return best
}

// versionQuery is a dependency's version constraint.
type versionQuery struct {
	raw string
	c   *semver.Constraints // nil: raw did not parse
}

func parseConstraint(raw string) versionQuery {
	q := versionQuery{raw: raw}
	if raw != "" {
		q.c, _ = semver.NewConstraint(raw)
	}
	return q
}

// match reports whether a tool of version (MCP Mesh's default "1.0.0"
// when empty) satisfies q, with the version parsed (nil when it does not
// parse). As in MCP Mesh, a constraint that does not parse matches only
// that very string, and a version that does not parse no constraint.
func (q versionQuery) match(version string) (*semver.Version, bool) {
	if version == "" {
		version = "1.0.0"
	}
	v, err := semver.NewVersion(version)
	switch {
	case q.raw == "":
		return v, true
	case q.c == nil:
		return v, version == q.raw
	case err != nil:
		return nil, false
	}
	return v, q.c.Check(v)
}

// compareVersions orders versions, one that did not parse lowest.
func compareVersions(a, b *semver.Version) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return -1
	case b == nil:
		return 1
	}
	return a.Compare(b)
}

// tagQuery is a dependency's tags read with MCP Mesh's operators, each
// list sorted without duplicates.
type tagQuery struct{ required, preferred, excluded []string }

// parseTags splits sorted tags by operator. Tags without one, the usual
// case, are all required and need no copy.
func parseTags(tags []string) tagQuery {
	if !slices.ContainsFunc(tags, func(t string) bool { return strings.HasPrefix(t, "+") || strings.HasPrefix(t, "-") }) {
		return tagQuery{required: tags}
	}
	var q tagQuery
	for _, t := range tags {
		switch {
		case strings.HasPrefix(t, "+"):
			q.preferred = append(q.preferred, t[1:])
		case strings.HasPrefix(t, "-"):
			q.excluded = append(q.excluded, t[1:])
		default:
			q.required = append(q.required, t)
		}
	}
	q.required, q.preferred, q.excluded = sortedTags(q.required), sortedTags(q.preferred), sortedTags(q.excluded)
	return q
}

// match reports whether a tool's tags (sorted) satisfy q, and how many of
// the preferred tags it has.
func (q tagQuery) match(have []string) (int, bool) {
	if !subset(q.required, have) {
		return 0, false
	}
	for _, x := range q.excluded {
		if _, found := slices.BinarySearch(have, x); found {
			return 0, false
		}
	}
	n := 0
	for _, p := range q.preferred {
		if _, found := slices.BinarySearch(have, p); found {
			n++
		}
	}
	return n, true
}

// mayProvide reports whether an agent of provider's may serve the
// dependencies of an agent of consumer's: an agent of its own entity, of
// the mesh's own CAs (""), or of an entity the operator lets provide to
// everyone may. So a mesh agent's calls never go to a partner's host
// unless the operator said so, nor one partner's to another's. An agent
// registered without a certificate provides only to agents registered
// without one: in TLS auto, a caller without a certificate must not
// become where an authenticated agent sends its calls.
func (r *Registry) mayProvide(provider, consumer party) bool {
	if provider.anonymous {
		return consumer.anonymous
	}
	return provider.entity == consumer.entity || provider.entity == "" || r.providerEntities[provider.entity]
}

// sortedTags returns tags sorted and without duplicates: tags itself when
// it is so already, as a registration's few tags usually are.
func sortedTags(tags []string) []string {
	if sortedUnique(tags) {
		return tags
	}
	s := slices.Clone(tags)
	slices.Sort(s)
	return slices.Compact(s)
}

func sortedUnique(tags []string) bool {
	for i := 1; i < len(tags); i++ {
		if tags[i-1] >= tags[i] {
			return false
		}
	}
	return true
}

// subset reports whether every tag of want is in have; both are sorted
// without duplicates, so one pass over each decides.
func subset(want, have []string) bool {
	j := 0
	for _, w := range want {
		for j < len(have) && have[j] < w {
			j++
		}
		if j == len(have) || have[j] != w {
			return false
		}
		j++
	}
	return true
}

// tagsKey joins sorted tags into one string that no other list of tags
// joins into.
func tagsKey(tags []string) string {
	if len(tags) == 0 {
		return ""
	}
	var b strings.Builder
	for _, t := range tags {
		b.WriteString(strconv.Itoa(len(t)))
		b.WriteByte(':')
		b.WriteString(t)
	}
	return b.String()
}
