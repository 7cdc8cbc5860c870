package server_test

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
)

// allowedDiff is a way meshd's JSON may differ from MCP Mesh's at the
// paths it matches, and why. Every difference the differential tests
// accept is one of these; any other fails them.
type allowedDiff struct {
	path *regexp.Regexp
	// kind: "value" (both have it, values differ), "extra" (meshd only),
	// "missing" (MCP Mesh only).
	kind string
	why  string
}

func allow(path, kind, why string) allowedDiff {
	return allowedDiff{path: regexp.MustCompile(`^` + path + `$`), kind: kind, why: why}
}

// agentInfoAllowed are the accepted differences in GET /agents (and what
// MCP Mesh's meshctl prints of it as JSON).
var agentInfoAllowed = []allowedDiff{
	allow(`(.*\.)?timestamp`, "value", "the time of the answer: two processes, two clocks"),
	allow(`.*\.(created_at|last_seen)`, "value", "when each registry saw the agent: the requests reach them one after the other"),
	allow(`.*\.(owner|node|reason|certificate_expires_at|unauthenticated)`, "extra", "meshd's own fields: who holds the id (the binding rule), why it was evicted, its certificate's expiry, whether it registered without a certificate"),
	allow(`\.registry\.url`, "value", "each registry's own address"),
	allow(`.*\.namespace`, "extra", "meshd lists each agent's namespace, which GET /agents?namespace= filters on in both"),
}

// diffJSON compares want (MCP Mesh's) with got (meshd's) field by field
// and returns each difference no allowed entry covers. Arrays of objects
// that carry an "id" or "agent_id" are compared in that order, since the
// registries list agents in different orders.
func diffJSON(path string, want, got any, allowed []allowedDiff) []string {
	if reflect.DeepEqual(want, got) {
		return nil
	}
	ok := func(kind string) bool {
		for _, a := range allowed {
			if a.kind == kind && a.path.MatchString(path) {
				return true
			}
		}
		return false
	}
	wm, wIsMap := want.(map[string]any)
	gm, gIsMap := got.(map[string]any)
	if wIsMap && gIsMap {
		var out []string
		keys := map[string]bool{}
		for k := range wm {
			keys[k] = true
		}
		for k := range gm {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			p := path + "." + k
			w, inW := wm[k]
			g, inG := gm[k]
			switch {
			case !inW:
				if !okAt(allowed, "extra", p) {
					out = append(out, fmt.Sprintf("%s: only meshd has it (%v)", p, short(g)))
				}
			case !inG:
				if !okAt(allowed, "missing", p) {
					out = append(out, fmt.Sprintf("%s: only MCP Mesh has it (%v)", p, short(w)))
				}
			default:
				out = append(out, diffJSON(p, w, g, allowed)...)
			}
		}
		return out
	}
	wa, wIsArr := want.([]any)
	ga, gIsArr := got.([]any)
	if wIsArr && gIsArr && len(wa) == len(ga) {
		wa, ga = byID(wa), byID(ga)
		var out []string
		for i := range wa {
			out = append(out, diffJSON(fmt.Sprintf("%s[%d]", path, i), wa[i], ga[i], allowed)...)
		}
		return out
	}
	if ok("value") {
		return nil
	}
	return []string{fmt.Sprintf("%s: MCP Mesh %v, meshd %v", path, short(want), short(got))}
}

func okAt(allowed []allowedDiff, kind, path string) bool {
	for _, a := range allowed {
		if a.kind == kind && a.path.MatchString(path) {
			return true
		}
	}
	return false
}

// byID sorts a copy of objects by their "id" or "agent_id", when every
// element has one.
func byID(xs []any) []any {
	key := func(x any) (string, bool) {
		m, ok := x.(map[string]any)
		if !ok {
			return "", false
		}
		for _, k := range []string{"id", "agent_id"} {
			if s, ok := m[k].(string); ok {
				return s, true
			}
		}
		return "", false
	}
	for _, x := range xs {
		if _, ok := key(x); !ok {
			return xs
		}
	}
	out := append([]any(nil), xs...)
	sort.SliceStable(out, func(i, j int) bool { a, _ := key(out[i]); b, _ := key(out[j]); return a < b })
	return out
}

func short(v any) string {
	s := fmt.Sprintf("%v", v)
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return strings.ReplaceAll(s, "\n", " ")
}
