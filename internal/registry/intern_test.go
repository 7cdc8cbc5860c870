package registry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/meshapi"
)

// TestCompactKeepsRegistration: the compact form of a registration says
// everything the parsed one does, for MCP Mesh's full payload and for one
// with @mesh.llm declarations.
func TestCompactKeepsRegistration(t *testing.T) {
	bench, err := os.ReadFile("../../bench/mcpmesh/heartbeat.json")
	if err != nil {
		t.Fatal(err)
	}
	llm := []byte(`{"agent_id":"chat","http_host":"10.0.0.2","http_port":9000,"a2a_producer":true,
		"tools":[{"function_name":"ask","capability":"chat","tags":["b","a","b"],
		"llm_filter":{"filter":["weather",{"capability":"geocode","tags":["maps"]}],"filter_mode":"all"},
		"llm_provider":{"capability":"llm","tags":["+claude"]}}]}`)
	for _, body := range [][]byte{bench, llm} {
		reg, _, err := ParseRegistration(body)
		if err != nil {
			t.Fatal(err)
		}
		got, ts := compact(reg)
		if bytes.Contains(body, []byte("inputSchema")) != slices.ContainsFunc(reg.Tools, func(t meshapi.Tool) bool { return t.InputSchema != nil }) {
			t.Errorf("the parsed registration lost its input schemas")
		}
		// The registry keeps no input schema in memory; the stored
		// payload holds them.
		reg.Tools = withoutSchemas(reg.Tools)
		want, _ := json.Marshal(reg)
		have, _ := json.Marshal(got)
		if string(want) != string(have) {
			t.Errorf("compact changed the registration:\n got %s\nwant %s", have, want)
		}
		if len(got.Tools) != len(ts.tools) || (len(got.Tools) > 0 && &got.Tools[0] != &ts.tools[0]) {
			t.Errorf("the compact registration's tools are not its toolSet's")
		}
	}
}

// TestToolSetsShared: registrations that declare the same tools share one
// toolSet, others do not, and a toolSet nobody holds leaves the table.
func TestToolSetsShared(t *testing.T) {
	parse := func(id string, tools, tags int) meshapi.Registration {
		reg, _, err := ParseRegistration(registration(t, id, tools, 1, tags))
		if err != nil {
			t.Fatal(err)
		}
		return reg
	}
	a, ta := compact(parse("a", 3, 2))
	b, tb := compact(parse("b", 3, 2))
	_, tc := compact(parse("c", 3, 1))
	if ta != tb || &a.Tools[0] != &b.Tools[0] {
		t.Errorf("two registrations with the same tools hold two copies of them")
	}
	if ta == tc {
		t.Errorf("registrations with different tools share a toolSet")
	}
	// Tools that differ only in their input schemas share one toolSet.
	withSchema, _, err := ParseRegistration([]byte(`{"agent_id":"s","tools":[{"function_name":"f","inputSchema":{"type":"object"}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	noSchema, _, err := ParseRegistration([]byte(`{"agent_id":"n","tools":[{"function_name":"f"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, ts := compact(withSchema); ts != sets.shared(noSchema.Tools) || ts.tools[0].InputSchema != nil {
		t.Errorf("tools that differ only in their input schemas do not share one schemaless toolSet")
	}
	if withSchema.Tools[0].InputSchema == nil {
		t.Errorf("compact cleared the parsed registration's input schema")
	}
	if a.AgentID != "a" || b.AgentID != "b" {
		t.Errorf("sharing tools mixed up agent ids: %q %q", a.AgentID, b.AgentID)
	}

	// A set of tools no registration holds any more leaves the table.
	key := fmt.Sprintf("gone-%d", time.Now().UnixNano())
	func() {
		reg, _, err := ParseRegistration([]byte(`{"agent_id":"x","tools":[{"function_name":"` + key + `"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		compact(reg)
	}()
	// The table's cleanup runs on the runtime's cleanup goroutine, after a
	// GC; a loaded machine may run it late.
	eventually.True(t, "the tools of a dropped registration to leave the table", func() bool {
		runtime.GC()
		return !holds(key)
	})
	runtime.KeepAlive(ta)
	runtime.KeepAlive(tb)
	runtime.KeepAlive(tc)
}

// holds reports whether the toolSet table has a slot for tools naming
// function.
func holds(function string) bool {
	sets.mu.Lock()
	defer sets.mu.Unlock()
	for k := range sets.m {
		if strings.Contains(k.Value(), function) {
			return true
		}
	}
	return false
}

// TestToolSetsConcurrent: many goroutines compacting the same and
// different tools while the collector runs get one toolSet per set of
// tools alive at a time (run under -race).
func TestToolSetsConcurrent(t *testing.T) {
	const goroutines, rounds = 8, 200
	var wg sync.WaitGroup
	got := make([][]*toolSet, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for i := range rounds {
				reg, _, err := ParseRegistration(registration(t, fmt.Sprintf("a%d", g), 1+i%3, 1, 1))
				if err != nil {
					t.Error(err)
					return
				}
				_, ts := compact(reg)
				got[g] = append(got[g], ts)
				if i%50 == 0 {
					runtime.GC()
				}
			}
		})
	}
	wg.Wait()
	// Every toolSet is still held (by got), so each set of tools has one.
	for i := range rounds {
		for g := 1; g < goroutines; g++ {
			if got[g][i] != got[0][i] {
				t.Fatalf("round %d: goroutines 0 and %d hold different toolSets for the same tools", i, g)
			}
		}
	}
}

// TestToolSetReuse: an equal resolution computed again (at a later
// topology, say) is the earlier value itself; a different one replaces it.
// Concurrent callers agree (run under -race).
func TestToolSetReuse(t *testing.T) {
	ts := &toolSet{}
	p := party{entity: "acme"}
	resolve := func(status string) setResolution {
		return setResolution{res: map[string][]meshapi.Resolution{"f": {{Capability: "geo", Status: status}}}}
	}
	first := ts.reuse(p, resolve("unresolved"))
	var wg sync.WaitGroup
	got := make([]setResolution, 8)
	for i := range got {
		wg.Go(func() { got[i] = ts.reuse(p, resolve("unresolved")) })
	}
	wg.Wait()
	for i, g := range got {
		if fmt.Sprintf("%p", g.res) != fmt.Sprintf("%p", first.res) {
			t.Errorf("caller %d got a copy of an equal resolution, not the shared one", i)
		}
	}
	changed := ts.reuse(p, resolve("available"))
	if changed.res["f"][0].Status != "available" || fmt.Sprintf("%p", changed.res) == fmt.Sprintf("%p", first.res) {
		t.Errorf("a changed resolution was not taken: %+v", changed.res)
	}
	if other := ts.reuse(party{}, resolve("available")); fmt.Sprintf("%p", other.res) == fmt.Sprintf("%p", changed.res) {
		t.Errorf("another party was given acme's resolution")
	}
}
