package registry

// Resolution is one dependency of a tool and the provider chosen for it,
// in MCP Mesh's shape; an unresolved dependency has empty provider fields.
type Resolution struct {
	AgentID      string `json:"agent_id"`
	Capability   string `json:"capability"`
	Endpoint     string `json:"endpoint"`
	FunctionName string `json:"function_name"`
	Status       string `json:"status"`
}

// resolveFor returns e's dependency resolution, computed again only when
// the topology moved since it was cached.
func (r *Registry) resolveFor(e *entry) map[string][]Resolution {
	topo := r.topology.Load()
	e.mu.Lock()
	if e.resolved != nil && e.resolvedAt == topo {
		res := e.resolved
		e.mu.Unlock()
		return res
	}
	reg := e.reg
	e.mu.Unlock()
	res := r.resolve(reg)
	e.mu.Lock()
	e.resolved, e.resolvedAt = res, topo
	e.mu.Unlock()
	return res
}

// index moves e in the capability index from old's tools to its current
// ones. The caller holds r.mu for writing.
func (r *Registry) index(e *entry, old *Registration) {
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

func (r *Registry) unindex(e *entry, old *Registration) {
	for _, t := range old.Tools {
		if m := r.providers[t.Capability]; m != nil && m[old.AgentID] == e {
			delete(m, old.AgentID)
			if len(m) == 0 {
				delete(r.providers, t.Capability)
			}
		}
	}
}

// resolve picks, for every dependency of every tool of reg, a healthy
// provider whose tool has the capability and all the requested tags in the
// requested namespace (the lowest agent id wins, so answers are stable).
func (r *Registry) resolve(reg Registration) map[string][]Resolution {
	out := make(map[string][]Resolution, len(reg.Tools))
	for _, t := range reg.Tools {
		if len(t.Dependencies) == 0 {
			continue
		}
		res := make([]Resolution, 0, len(t.Dependencies))
		for _, d := range t.Dependencies {
			res = append(res, r.provider(d))
		}
		out[t.FunctionName] = res
	}
	return out
}

func (r *Registry) provider(d Dependency) Resolution {
	best := Resolution{Status: "unresolved"}
	ns := d.Namespace
	if ns == "" {
		ns = "default"
	}
	r.mu.RLock()
	cands := make([]*entry, 0, len(r.providers[d.Capability]))
	for _, e := range r.providers[d.Capability] {
		cands = append(cands, e)
	}
	r.mu.RUnlock()
	for _, e := range cands {
		e.mu.Lock()
		rec, reg, gone := e.rec, e.reg, e.gone
		e.mu.Unlock()
		if gone || rec.Status != StatusHealthy || namespace(reg) != ns {
			continue
		}
		for _, t := range reg.Tools {
			if t.Capability != d.Capability || !containsAll(t.Tags, d.Tags) {
				continue
			}
			if best.AgentID == "" || reg.AgentID < best.AgentID {
				best = Resolution{AgentID: reg.AgentID, Capability: t.Capability, Endpoint: endpoint(reg, true), FunctionName: t.FunctionName, Status: "available"}
			}
			break
		}
	}
	if best.AgentID == "" {
		best.Capability = ""
	}
	return best
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			if h == w {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
