package registry

import (
	"encoding/json"
	"regexp"
	"sort"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
)

// Stage is one step of a dependency's resolution: the candidates it kept
// and those it dropped, with why (MCP Mesh's audit stage).
type Stage struct {
	Stage   string    `json:"stage"`
	Kept    []string  `json:"kept"`
	Evicted []Dropped `json:"evicted,omitempty"`
	Chosen  string    `json:"chosen,omitempty"`
	Reason  string    `json:"reason,omitempty"`
}

// Dropped is a candidate a stage dropped.
type Dropped struct {
	ID      string         `json:"id"`
	Reason  string         `json:"reason"`
	Details map[string]any `json:"details,omitempty"`
}

// Explanation is why one dependency of one tool of an agent resolved to
// its provider, or to none: the stages resolution applies, in order.
type Explanation struct {
	FunctionName string
	DepIndex     int
	Dependency   meshapi.Dependency
	Stages       []Stage
	// Chosen is the provider, as dependencies_resolved gives it; Status
	// "unresolved" when there is none.
	Chosen meshapi.Resolution
}

// Explain returns, for every dependency of agent id's tools, in the order
// declared, how resolution picks its provider now. The choice it explains
// is the one POST /heartbeat answers: the same stages, in the same order.
func (r *Registry) Explain(id string) ([]Explanation, bool) {
	e := r.locked(id)
	if e == nil {
		return nil, false
	}
	reg, consumer := e.reg, partyOf(&e.rec)
	e.mu.Unlock()
	var out []Explanation
	for _, t := range reg.Tools {
		for i, d := range t.Dependencies {
			out = append(out, r.explain(t.FunctionName, i, d, consumer))
		}
	}
	return out, true
}

// candidate is one tool of one agent that offers a capability.
type candidate struct {
	id      string // "<agent>:<function>", as MCP Mesh names it
	version string
	agent   string
	healthy bool
	ns      string
	owner   party
	tags    []string
	res     meshapi.Resolution
}

func (r *Registry) explain(fn string, idx int, d meshapi.Dependency, consumer party) Explanation {
	ns := d.Namespace
	if ns == "" {
		ns = "default"
	}
	x := Explanation{FunctionName: fn, DepIndex: idx, Dependency: d, Chosen: r.provider(d.Capability, ns, sortedTags(d.Tags), d.Version, consumer)}
	r.mu.RLock()
	entries := make([]*entry, 0, len(r.providers[d.Capability]))
	for _, e := range r.providers[d.Capability] {
		entries = append(entries, e)
	}
	r.mu.RUnlock()
	var cands []candidate
	for _, e := range entries {
		e.mu.Lock()
		if !e.gone {
			for i, t := range e.reg.Tools {
				if t.Capability == d.Capability {
					cands = append(cands, candidate{id: e.reg.AgentID + ":" + t.FunctionName, agent: e.reg.AgentID,
						healthy: e.rec.Status == StatusHealthy, ns: namespace(e.reg), owner: partyOf(&e.rec), tags: toolTags(&e.reg, e.toolTags(), i), version: t.Version,
						res: meshapi.Resolution{AgentID: e.reg.AgentID, Capability: t.Capability, Endpoint: r.endpoint(e.reg), FunctionName: t.FunctionName, Status: "available"}})
				}
			}
		}
		e.mu.Unlock()
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].id < cands[j].id })
	q, vq := parseTags(sortedTags(d.Tags)), parseConstraint(d.Version)
	score := map[string]int{}
	stages := []struct {
		name string
		keep func(c candidate) (string, map[string]any)
	}{
		{"health", func(c candidate) (string, map[string]any) {
			if !c.healthy {
				return "Unhealthy", nil
			}
			return "", nil
		}},
		{"capability_match", func(candidate) (string, map[string]any) { return "", nil }},
		{"namespace", func(c candidate) (string, map[string]any) {
			if c.ns != ns {
				return "OtherNamespace", map[string]any{"namespace": c.ns, "wanted": ns}
			}
			return "", nil
		}},
		{"trust_boundary", func(c candidate) (string, map[string]any) {
			if !r.mayProvide(c.owner, consumer) {
				return "OutsideTrustBoundary", map[string]any{"provider_entity": c.owner.entity, "consumer_entity": consumer.entity, "provider_unauthenticated": c.owner.anonymous}
			}
			return "", nil
		}},
		{"tags", func(c candidate) (string, map[string]any) {
			n, ok := q.match(c.tags)
			if !ok {
				return "MissingTag", map[string]any{"required": q.required, "excluded": q.excluded, "has": c.tags}
			}
			score[c.id] = n
			return "", nil
		}},
		{"version", func(c candidate) (string, map[string]any) {
			if _, ok := vq.match(c.version); !ok {
				return "VersionConstraintFailed", map[string]any{"constraint": d.Version, "version": c.version}
			}
			return "", nil
		}},
	}
	kept := cands
	for _, st := range stages {
		s := Stage{Stage: st.name, Kept: []string{}}
		var next []candidate
		for _, c := range kept {
			if why, details := st.keep(c); why != "" {
				s.Evicted = append(s.Evicted, Dropped{ID: c.id, Reason: why, Details: details})
				continue
			}
			next = append(next, c)
			s.Kept = append(s.Kept, c.id)
		}
		x.Stages = append(x.Stages, s)
		kept = next
	}
	tie := Stage{Stage: "tiebreaker", Kept: []string{}, Reason: "MostPreferredTagsThenHighestVersionThenLowestAgentID"}
	for _, c := range kept {
		tie.Kept = append(tie.Kept, c.id)
		if c.res == x.Chosen {
			tie.Chosen = c.id
		}
	}
	x.Stages = append(x.Stages, tie)
	return x
}

// Schema is one canonical JSON Schema agents registered (MCP Mesh's
// SchemaEntryInfo), content-addressed by its hash.
type Schema struct {
	Hash          string          `json:"hash"`
	Canonical     json.RawMessage `json:"canonical"`
	RuntimeOrigin string          `json:"runtime_origin"`
	CreatedAt     time.Time       `json:"created_at"`
}

var schemaHash = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// schemaFields are the canonical schemas a tool may carry, as MCP Mesh
// agents send them.
type schemaFields struct {
	InputHash       string          `json:"inputSchemaHash"`
	InputCanonical  json.RawMessage `json:"inputSchemaCanonical"`
	OutputHash      string          `json:"outputSchemaHash"`
	OutputCanonical json.RawMessage `json:"outputSchemaCanonical"`
}

// Schemas returns the canonical schemas the registered agents' tools
// carry, one per hash, the most recently registered first, at most limit.
// A hash is listed with the content of the agent that registered it
// first; a malformed hash or a canonical form that is not a JSON object
// is left out.
func (r *Registry) Schemas(limit int) []Schema {
	byHash := map[string]Schema{}
	for _, e := range r.snapshot() {
		e.mu.Lock()
		payload, created, runtime, gone := e.rec.Payload, e.rec.RegisteredAt, e.reg.Runtime, e.gone
		e.mu.Unlock()
		if gone {
			continue
		}
		var body struct {
			Tools []schemaFields `json:"tools"`
		}
		if json.Unmarshal(payload, &body) != nil {
			continue
		}
		if runtime == "" {
			runtime = "python"
		}
		for _, t := range body.Tools {
			for _, s := range []struct {
				hash string
				raw  json.RawMessage
			}{{t.InputHash, t.InputCanonical}, {t.OutputHash, t.OutputCanonical}} {
				if !schemaHash.MatchString(s.hash) || len(s.raw) == 0 || s.raw[0] != '{' {
					continue
				}
				if old, ok := byHash[s.hash]; ok && !created.Before(old.CreatedAt) {
					continue
				}
				byHash[s.hash] = Schema{Hash: s.hash, Canonical: s.raw, RuntimeOrigin: runtime, CreatedAt: created}
			}
		}
	}
	out := make([]Schema, 0, len(byHash))
	for _, s := range byHash {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].Hash < out[j].Hash
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}
