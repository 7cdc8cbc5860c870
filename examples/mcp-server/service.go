package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/meshauth"
)

// service is the MCP server: its tools, and the routes meshauth guards.
type service struct {
	auth     *meshauth.Auth
	sessions *meshauth.Sessions
	now      func() time.Time
}

// handler routes the MCP endpoint and session attach, both behind
// meshauth: POST /mcp through MCP (method and tool allow-listed, lists
// filtered), POST /session/attach and GET /session/jwks through Handler.
func (s *service) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/mcp", s.auth.MCP(http.HandlerFunc(s.mcp)))
	mux.Handle("POST "+meshapi.PathSessionAttach, s.auth.Handler(http.HandlerFunc(s.attach)))
	mux.HandleFunc("GET "+meshapi.PathSessionJWKS, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.sessions.JWKS())
	})
	return mux
}

// tools is what the server offers; meshauth shows each caller only those
// its policy lets it call.
var tools = []tool{
	{Name: "echo", Description: "Echo a message back, with the caller's verified identity."},
	{Name: "clock", Description: "The server's time."},
	{Name: "delete_everything", Description: "A dangerous tool no ordinary agent may call."},
}

type tool struct {
	Name        string         `json:"name"`
	Description string         `json:"description"`
	InputSchema map[string]any `json:"inputSchema"`
}

type request struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Params struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	} `json:"params"`
}

type response struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  any             `json:"result,omitempty"`
	Error   *rpcError       `json:"error,omitempty"`
}

type rpcError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// mcp answers initialize, tools/list and tools/call. meshauth has
// already verified the caller and decided that it may make this call.
func (s *service) mcp(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "this server sends no stream: POST JSON-RPC messages", http.StatusMethodNotAllowed)
		return
	}
	var req request
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, response{JSONRPC: "2.0", ID: json.RawMessage("null"), Error: &rpcError{-32700, "not JSON"}})
		return
	}
	if req.ID == nil { // a notification (notifications/initialized)
		w.WriteHeader(http.StatusAccepted)
		return
	}
	// The identity comes from the verified certificate, never from the
	// call's arguments.
	caller, _ := meshauth.FromContext(r.Context())
	res := response{JSONRPC: "2.0", ID: req.ID}
	switch req.Method {
	case "initialize":
		res.Result = map[string]any{
			"protocolVersion": "2025-06-18",
			"capabilities":    map[string]any{"tools": map[string]any{}},
			"serverInfo":      map[string]any{"name": "meshtrust-example", "version": "1.0.0"},
		}
	case "tools/list":
		list := make([]tool, len(tools))
		for i, t := range tools {
			t.InputSchema = map[string]any{"type": "object"}
			list[i] = t
		}
		res.Result = map[string]any{"tools": list}
	case "tools/call":
		text, err := s.call(caller, req.Params.Name, req.Params.Arguments)
		if err != nil {
			res.Error = &rpcError{-32602, err.Error()}
			break
		}
		res.Result = map[string]any{"content": []map[string]any{{"type": "text", "text": text}}}
	default:
		res.Error = &rpcError{-32601, "method not found: " + req.Method}
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *service) call(c *meshauth.Caller, name string, args json.RawMessage) (string, error) {
	switch name {
	case "echo":
		var in struct {
			Message string `json:"message"`
		}
		if len(args) > 0 {
			if err := json.Unmarshal(args, &in); err != nil {
				return "", fmt.Errorf("echo: arguments: %w", err)
			}
		}
		who := c.Name
		if c.Session != nil {
			who += " (session " + c.Session.ID + ")"
		}
		return fmt.Sprintf("%s says: %s", who, in.Message), nil
	case "clock":
		return s.now().UTC().Format(time.RFC3339), nil
	case "delete_everything":
		return "nothing was deleted: this is an example", nil
	}
	return "", fmt.Errorf("unknown tool %q", name)
}

// attach is the seed's session.attach: the certificate must name the
// claimed agent id; the token is bound to the certificate.
func (s *service) attach(w http.ResponseWriter, r *http.Request) {
	caller, _ := meshauth.FromContext(r.Context())
	var req meshapi.SessionAttachRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil || req.AgentID == "" {
		writeJSON(w, http.StatusBadRequest, meshapi.ErrorResponse{Error: `body must be {"agent_id": "..."}`, Reason: "bad_request", Timestamp: s.stamp()})
		return
	}
	id, err := caller.AgentID()
	if err != nil || id != req.AgentID {
		writeJSON(w, http.StatusForbidden, meshapi.ErrorResponse{Error: fmt.Sprintf("your certificate (%s) does not speak for agent %q", caller.Name, req.AgentID), Reason: "identity_mismatch", Timestamp: s.stamp()})
		return
	}
	tok, sess, err := s.sessions.Mint(caller)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, meshapi.ErrorResponse{Error: "could not mint a token", Timestamp: s.stamp()})
		return
	}
	writeJSON(w, http.StatusOK, meshapi.SessionAttachResponse{Token: tok, TokenType: "Bearer", SessionID: sess.ID,
		AgentID: id, Identity: caller.Name, ExpiresAt: sess.Expires.UTC()})
}

func (s *service) stamp() string { return s.now().UTC().Format(time.RFC3339Nano) }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
