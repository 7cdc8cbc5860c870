package registry

import (
	"encoding/json"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"unique"
	"weak"

	"github.com/meshtrust/meshtrust/meshapi"
)

// The registry keeps every agent's parsed registration for as long as the
// agent is registered, beside its canonical payload. Agents of one kind
// (replicas of one service, say) declare the same tools, capabilities,
// tags and descriptions, so a registration is kept in a compact form: its
// strings interned, its slices exactly as long as their contents. A
// hundred thousand replicas then share one copy of each string instead of
// holding one each, and no slice keeps the spare capacity that decoding
// left behind.
//
// Interning goes through the unique package, whose table holds its strings
// weakly: a string no registration refers to any more is freed. A
// registration's tools go one step further: registrations that declare the
// same tools share one toolSet, held as weakly, by the table in sets.

// intern returns s's canonical copy.
func intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}

// each returns f of every element of xs, in a slice of exactly its
// length; nil for an empty xs.
func each[T any](xs []T, f func(T) T) []T {
	if len(xs) == 0 {
		return nil
	}
	out := make([]T, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

// internAll returns ss interned, in a slice of exactly its length.
func internAll(ss []string) []string { return each(ss, intern) }

// toolSet is a registration's tools in compact form, with the sorted tags
// resolution matches against (nil when every tool's tags are sorted
// without duplicates already, by tool otherwise). Shared: tools and tags
// are never modified.
type toolSet struct {
	tools []meshapi.Tool
	tags  [][]string

	// last is the latest resolution of these tools for each party. A
	// topology change that leaves it as it was (a new agent somewhere
	// else) then yields the same value, so agents resolved before and
	// after the change still share one copy. mu is a leaf lock.
	mu   sync.Mutex
	last map[party]setResolution
}

// reuse returns the resolution of ts for consumer: s, or the equal one
// resolved before it.
func (ts *toolSet) reuse(consumer party, s setResolution) setResolution {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if prev, ok := ts.last[consumer]; ok && prev.available == s.available &&
		reflect.DeepEqual(prev.res, s.res) && reflect.DeepEqual(prev.list, s.list) {
		return prev
	}
	if ts.last == nil {
		ts.last = make(map[party]setResolution, 1)
	}
	ts.last[consumer] = s
	return s
}

// toolSets is the table of every toolSet some registration holds, by the
// JSON of its tools. Its lock is a leaf: nothing is locked under it.
type toolSets struct {
	mu sync.Mutex
	m  map[unique.Handle[string]]weak.Pointer[toolSet]
}

var sets = toolSets{m: map[unique.Handle[string]]weak.Pointer[toolSet]{}}

// shared returns the toolSet of tools: the one a registration that
// declares the same tools already holds, or a new one.
func (s *toolSets) shared(tools []meshapi.Tool) *toolSet {
	if len(tools) == 0 {
		return &toolSet{}
	}
	raw, err := json.Marshal(tools)
	if err != nil { // not for values json.Unmarshal produced; keep them unshared
		return newToolSet(tools)
	}
	key := unique.Make(string(raw))
	if ts := s.lookup(key); ts != nil {
		return ts
	}
	// Compacted outside the lock, which every changed registration takes;
	// a set another caller stored meanwhile wins, and this one is dropped.
	fresh := newToolSet(tools)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ts := s.m[key].Value(); ts != nil {
		return ts
	}
	ts := fresh
	s.m[key] = weak.Make(ts)
	// Once no registration holds ts, its slot goes; unless another
	// toolSet of the same tools has taken it meanwhile.
	runtime.AddCleanup(ts, func(key unique.Handle[string]) {
		s.mu.Lock()
		if s.m[key].Value() == nil {
			delete(s.m, key)
		}
		s.mu.Unlock()
	}, key)
	return ts
}

// lookup returns the toolSet stored for key, or nil.
func (s *toolSets) lookup(key unique.Handle[string]) *toolSet {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[key].Value()
}

func newToolSet(tools []meshapi.Tool) *toolSet {
	ts := &toolSet{tools: each(tools, compactTool)}
	if slices.ContainsFunc(ts.tools, func(t meshapi.Tool) bool { return !sortedUnique(t.Tags) }) {
		ts.tags = make([][]string, len(ts.tools))
		for i, t := range ts.tools {
			ts.tags[i] = slices.Clip(sortedTags(t.Tags))
		}
	}
	return ts
}

// compact returns reg in its compact form, equal to reg, with the toolSet
// its tools now are: reg shares no memory with it but interned strings.
func compact(reg meshapi.Registration) (meshapi.Registration, *toolSet) {
	out := reg
	out.AgentID = intern(reg.AgentID)
	out.Name = intern(reg.Name)
	out.Version = intern(reg.Version)
	out.AgentType = intern(reg.AgentType)
	out.Runtime = intern(reg.Runtime)
	out.Description = intern(reg.Description)
	out.HTTPHost = intern(reg.HTTPHost)
	out.Namespace = intern(reg.Namespace)
	ts := sets.shared(withoutSchemas(reg.Tools))
	out.Tools = ts.tools
	return out, ts
}

// withoutSchemas returns tools with no input schema: the registry keeps
// none in memory (the stored payload holds them as the agent sent them,
// and resolution never reads them), so tools that differ only in their
// schemas share one toolSet. tools itself when none has one.
func withoutSchemas(tools []meshapi.Tool) []meshapi.Tool {
	if !slices.ContainsFunc(tools, func(t meshapi.Tool) bool { return t.InputSchema != nil }) {
		return tools
	}
	out := slices.Clone(tools)
	for i := range out {
		out[i].InputSchema = nil
	}
	return out
}

// compactTool and compactDep start from a copy, so that a field added to
// Tool or Dependency later is kept (if not compacted) rather than lost.
func compactTool(t meshapi.Tool) meshapi.Tool {
	out := t
	out.FunctionName = intern(t.FunctionName)
	out.Capability = intern(t.Capability)
	out.Version = intern(t.Version)
	out.Tags = internAll(t.Tags)
	out.Description = intern(t.Description)
	out.Dependencies = each(t.Dependencies, compactDep)
	if t.LLMFilter != nil {
		f := *t.LLMFilter
		f.Mode = intern(f.Mode)
		f.Filter = each(f.Filter, func(it meshapi.FilterItem) meshapi.FilterItem {
			return meshapi.FilterItem{Dependency: compactDep(it.Dependency)}
		})
		out.LLMFilter = &f
	}
	if t.LLMProvider != nil {
		d := compactDep(*t.LLMProvider)
		out.LLMProvider = &d
	}
	return out
}

func compactDep(d meshapi.Dependency) meshapi.Dependency {
	out := d
	out.Capability = intern(d.Capability)
	out.Tags = internAll(d.Tags)
	out.Version = intern(d.Version)
	out.Namespace = intern(d.Namespace)
	return out
}
