package server

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/meshtrust/meshtrust/internal/registry"
)

// The routes MCP Mesh's meshctl reads for `registry status|drain|resume`,
// `list --schemas` and `audit`. meshd serves them on its admin API only
// (the unix socket, and the mTLS listener an admin identity reaches, which
// MCP_MESH_ADMIN_PORT opens), where MCP Mesh serves the last two on its
// agent port to anyone.

// drainState is MCP Mesh's GET/POST/DELETE /admin/drain answer. meshd has
// no jobs, so no claims are ever live.
type drainState struct {
	Draining   bool `json:"draining"`
	LiveClaims int  `json:"live_claims"`
}

func (s *Server) drain(on *bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if on != nil && *on != s.reg.Draining() {
			s.reg.SetDraining(*on)
			s.log.Warn("registry drain changed: while draining, meshd registers no new agent", "draining", *on)
		}
		writeJSON(w, http.StatusOK, drainState{Draining: s.reg.Draining()})
	}
}

// limitParam reads the limit query parameter: def when absent, else a
// number in 1..max.
func limitParam(r *http.Request, def, max int) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, fmt.Errorf("Invalid query parameters: limit=%q is not a number from 1 to %d", v, max)
	}
	return n, nil
}

func (s *Server) listSchemas(w http.ResponseWriter, r *http.Request) {
	limit, err := limitParam(r, 100, 1000)
	if err != nil {
		s.adminError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	list := s.reg.Schemas(limit)
	writeJSON(w, http.StatusOK, map[string]any{"schemas": list, "count": len(list)})
}

// resolutionEvent is one of MCP Mesh's dependency_resolved or
// dependency_unresolved events, as `meshctl audit` reads them. meshd
// computes them when asked, from the registry as it is: they say why each
// dependency resolves as it does now.
type resolutionEvent struct {
	AgentID      string         `json:"agent_id"`
	AgentName    string         `json:"agent_name,omitempty"`
	EventType    string         `json:"event_type"`
	FunctionName string         `json:"function_name"`
	Timestamp    string         `json:"timestamp"`
	Data         resolutionData `json:"data"`
}

type resolutionData struct {
	Consumer string            `json:"consumer"`
	DepIndex int               `json:"dep_index"`
	Spec     resolutionSpec    `json:"spec"`
	Stages   []registry.Stage  `json:"stages"`
	Chosen   *resolutionChosen `json:"chosen,omitempty"`
}

type resolutionSpec struct {
	Capability        string   `json:"capability"`
	Tags              []string `json:"tags,omitempty"`
	VersionConstraint string   `json:"version_constraint,omitempty"`
	Namespace         string   `json:"namespace,omitempty"`
	SchemaMode        string   `json:"schema_mode"`
}

type resolutionChosen struct {
	AgentID      string `json:"agent_id"`
	Endpoint     string `json:"endpoint"`
	FunctionName string `json:"function_name"`
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := limitParam(r, 50, 500)
	if err != nil {
		s.adminError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	typ := q.Get("type")
	switch typ {
	case "", "dependency_resolved", "dependency_unresolved":
	case "register", "heartbeat", "expire", "update", "unregister", "unhealthy", "rotate":
		// Lifecycle events are in meshd's audit log (meshctl ca audit),
		// not here.
		writeJSON(w, http.StatusOK, map[string]any{"events": []resolutionEvent{}, "count": 0})
		return
	default:
		s.adminError(w, r, http.StatusBadRequest, fmt.Sprintf("Invalid query parameters: type=%q is not an event type", typ))
		return
	}
	views := s.reg.List(registry.Filter{})
	names := make(map[string]string, len(views))
	for _, v := range views {
		names[v.ID] = v.Name
	}
	ids := []string{q.Get("agent_id")}
	if ids[0] == "" {
		ids = ids[:0]
		for _, v := range views {
			ids = append(ids, v.ID)
		}
	}

	events := []resolutionEvent{}
	ts := now(s)
	// Explaining costs a look at every candidate: stop at the limit.
	for _, id := range ids {
		if len(events) >= limit {
			break
		}
		xs, _ := s.reg.Explain(id)
		for _, x := range xs {
			if fn := q.Get("function_name"); fn != "" && fn != x.FunctionName {
				continue
			}
			ev := resolutionEvent{AgentID: id, AgentName: names[id], EventType: "dependency_unresolved", FunctionName: x.FunctionName, Timestamp: ts,
				Data: resolutionData{Consumer: id, DepIndex: x.DepIndex, Stages: x.Stages,
					Spec: resolutionSpec{Capability: x.Dependency.Capability, Tags: x.Dependency.Tags, VersionConstraint: x.Dependency.Version, Namespace: x.Dependency.Namespace, SchemaMode: "none"}}}
			if x.Chosen.Status == "available" {
				ev.EventType = "dependency_resolved"
				ev.Data.Chosen = &resolutionChosen{AgentID: x.Chosen.AgentID, Endpoint: x.Chosen.Endpoint, FunctionName: x.Chosen.FunctionName}
			}
			if typ != "" && typ != ev.EventType {
				continue
			}
			if len(events) < limit {
				events = append(events, ev)
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": events, "count": len(events)})
}

// adminRegistryRoutes adds MCP Mesh's admin-side registry routes to mux.
func (s *Server) adminRegistryRoutes(mux *http.ServeMux) {
	on, off := true, false
	mux.HandleFunc("GET /admin/drain", s.drain(nil))
	mux.HandleFunc("POST /admin/drain", s.drain(&on))
	mux.HandleFunc("DELETE /admin/drain", s.drain(&off))
	mux.HandleFunc("GET /schemas", s.listSchemas)
	mux.HandleFunc("GET /events", s.listEvents)
	// meshctl audit and meshctl list find agents here first.
	mux.HandleFunc("GET /agents", func(w http.ResponseWriter, r *http.Request) { s.listAgents(w, r, nil) })
}
