package meshauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// The headers of the MCP 2026-07-28 streamable HTTP transport that repeat
// the body's method and name, so that intermediaries can route without
// parsing it. When present they must match the body.
const (
	HeaderMCPMethod = "Mcp-Method"
	HeaderMCPName   = "Mcp-Name"
)

// JSON-RPC error codes of refusals. -32001 and -32003 are in the range
// JSON-RPC leaves to implementations; the HTTP status says the same.
const (
	CodeUnauthenticated = -32001
	CodeForbidden       = -32003
	codeInvalidRequest  = -32600
	codeParseError      = -32700
)

// The MCP methods whose params name what they act on, and the list
// methods MCP filters to match.
var (
	nameParam = map[string]string{"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
	// listOf maps a list method to the result field holding its items,
	// the call method that gates each item and the item's name field.
	listOf = map[string]struct{ field, call, key string }{
		"tools/list":     {"tools", "tools/call", "name"},
		"prompts/list":   {"prompts", "prompts/get", "name"},
		"resources/list": {"resources", "resources/read", "uri"},
	}
)

// MCP returns h, an MCP server's streamable HTTP endpoint, behind the
// middleware. Each POSTed JSON-RPC request is authorized by its method
// and, for tools/call, prompts/get and resources/read, by the tool,
// prompt or resource it names (Operation KindMCP). tools/list,
// prompts/list and resources/list answers are filtered to what the caller
// may call, so the list and the call gate agree. Mcp-Method and Mcp-Name
// headers, when present, must match the body. Other HTTP methods (the GET
// of a server-to-client stream, the DELETE of a session) are authorized as
// KindHTTP operations. Refusals are JSON-RPC error objects.
//
// A batch (a JSON array) is refused: MCP sends one message per request.
// A JSON-RPC response the client sends back (to a server's request) is
// passed to h for any verified caller.
func (a *Auth) MCP(h http.Handler) http.Handler {
	plain := a.Handler(h)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			plain.ServeHTTP(w, r)
			return
		}
		op := Operation{Kind: KindMCP}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, a.cfg.MaxBody))
		if err != nil {
			rf := &refusal{code: http.StatusRequestEntityTooLarge, reason: ReasonBadRequest, detail: fmt.Sprintf("request body is larger than %d bytes", a.cfg.MaxBody)}
			a.refused(&op, rf)
			a.writeRPCRefusal(w, nil, codeInvalidRequest, rf)
			return
		}
		msg, code, perr := parseRPC(body)
		if perr != nil {
			rf := &refusal{code: http.StatusBadRequest, reason: ReasonBadRequest, detail: perr.Error()}
			a.refused(&op, rf)
			a.writeRPCRefusal(w, msg.ID, code, rf)
			return
		}
		op.MCPMethod, op.Name = msg.Method, msg.name
		c, gen, rf := a.identifyHTTP(r)
		if rf == nil {
			rf = headerMismatch(r.Header, msg)
		}
		if rf != nil {
			a.refused(&op, rf)
			a.writeRPCRefusal(w, msg.ID, rpcCode(rf), rf)
			return
		}
		if msg.Method != "" { // a response to the server needs no grant
			if _, rf := a.decide(c, &op); rf != nil {
				a.writeRPCRefusal(w, msg.ID, CodeForbidden, rf)
				return
			}
		}
		r = r.WithContext(a.withCaller(r.Context(), c, gen, r))
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		list, ok := listOf[msg.Method]
		if !ok {
			h.ServeHTTP(w, r)
			return
		}
		f := &listWriter{header: make(http.Header), code: http.StatusOK}
		h.ServeHTTP(f, r)
		a.writeFiltered(w, f, c, list.field, list.call, list.key, msg.ID)
	})
}

func rpcCode(rf *refusal) int {
	switch rf.code {
	case http.StatusUnauthorized:
		return CodeUnauthenticated
	case http.StatusForbidden:
		return CodeForbidden
	}
	return codeInvalidRequest
}

// rpcMessage is the part of a JSON-RPC message the middleware reads.
type rpcMessage struct {
	ID     json.RawMessage
	Method string
	name   string
}

// rpcKeys are the keys parseRPC reads; any other spelling of them is
// refused, so that the middleware and the server behind it cannot read
// different members out of one body (encoding/json matches keys without
// regard to case, and keeps the last of duplicates).
var rpcKeys = []string{"jsonrpc", "id", "method", "params", "result", "error", "name", "uri"}

// parseRPC reads one JSON-RPC message, refusing batches, duplicate keys
// and keys spelled unlike rpcKeys. It returns the JSON-RPC error code of
// a refusal.
func parseRPC(body []byte) (rpcMessage, int, error) {
	var msg rpcMessage
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '[' {
		return msg, codeInvalidRequest, errors.New("JSON-RPC batches are not accepted: send one message per request")
	}
	var top map[string]json.RawMessage
	if err := strictObject(body, &top); err != nil {
		return msg, codeParseError, fmt.Errorf("request body is not one JSON-RPC message: %w", err)
	}
	if id, ok := top["id"]; ok && isIDJSON(id) {
		msg.ID = id
	}
	if string(top["jsonrpc"]) != `"2.0"` {
		return msg, codeInvalidRequest, errors.New(`not a JSON-RPC 2.0 message: "jsonrpc" must be "2.0"`)
	}
	raw, hasMethod := top["method"]
	if !hasMethod {
		if _, ok := top["result"]; !ok {
			if _, ok := top["error"]; !ok {
				return msg, codeInvalidRequest, errors.New(`a JSON-RPC request needs a "method"`)
			}
		}
		return msg, 0, nil // a response
	}
	if err := json.Unmarshal(raw, &msg.Method); err != nil || msg.Method == "" {
		return msg, codeInvalidRequest, errors.New(`"method" must be a non-empty string`)
	}
	key, named := nameParam[msg.Method]
	if !named {
		return msg, 0, nil
	}
	var params map[string]json.RawMessage
	if err := strictObject(top["params"], &params); err != nil {
		return msg, codeInvalidRequest, fmt.Errorf("%s needs \"params\" as an object with %q: %w", msg.Method, key, err)
	}
	if err := json.Unmarshal(params[key], &msg.name); err != nil || msg.name == "" {
		return msg, codeInvalidRequest, fmt.Errorf("%s needs params.%s, a non-empty string", msg.Method, key)
	}
	return msg, 0, nil
}

func isIDJSON(id json.RawMessage) bool {
	return len(id) > 0 && (id[0] == '"' || id[0] == '-' || (id[0] >= '0' && id[0] <= '9'))
}

// strictObject decodes a JSON object into m, refusing duplicate keys and
// keys that differ from one of rpcKeys only by case.
func strictObject(data []byte, m *map[string]json.RawMessage) error {
	if len(data) == 0 {
		return errors.New("missing")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("not a JSON object")
	}
	out := make(map[string]json.RawMessage)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		k := tok.(string) // inside an object, a key is always a string
		for _, want := range rpcKeys {
			if k != want && strings.EqualFold(k, want) {
				return fmt.Errorf("key %q: write it %q", k, want)
			}
		}
		if _, dup := out[k]; dup {
			return fmt.Errorf("key %q appears twice", k)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
		out[k] = v
	}
	if _, err := dec.Token(); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	*m = out
	return nil
}

// headerMismatch refuses a request whose Mcp-Method or Mcp-Name header
// says something other than its body.
func headerMismatch(h http.Header, msg rpcMessage) *refusal {
	if vs, ok := h[HeaderMCPMethod]; ok && (len(vs) != 1 || vs[0] != msg.Method) {
		return &refusal{code: http.StatusBadRequest, reason: ReasonHeaderMismatch,
			detail: fmt.Sprintf("header %s %q does not match the body's method %q", HeaderMCPMethod, strings.Join(vs, ","), msg.Method)}
	}
	if vs, ok := h[HeaderMCPName]; ok && (len(vs) != 1 || vs[0] != msg.name) {
		return &refusal{code: http.StatusBadRequest, reason: ReasonHeaderMismatch,
			detail: fmt.Sprintf("header %s %q does not match the name the body's %s names (%q)", HeaderMCPName, strings.Join(vs, ","), msg.Method, msg.name)}
	}
	return nil
}

// rpcError is a JSON-RPC error response.
type rpcError struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Error   rpcErrorObject  `json:"error"`
}

type rpcErrorObject struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    struct {
		Reason string `json:"reason"`
	} `json:"data"`
}

func (a *Auth) writeRPCRefusal(w http.ResponseWriter, id json.RawMessage, code int, rf *refusal) {
	if id == nil {
		id = json.RawMessage("null")
	}
	e := rpcError{JSONRPC: "2.0", ID: id, Error: rpcErrorObject{Code: code, Message: rf.detail}}
	e.Error.Data.Reason = rf.reason
	if rf.code == http.StatusUnauthorized && strings.HasPrefix(rf.reason, "token_") {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	}
	writeJSON(w, rf.code, e)
}

// listWriter holds a list answer until it is filtered.
type listWriter struct {
	header http.Header
	code   int
	buf    bytes.Buffer
}

func (l *listWriter) Header() http.Header         { return l.header }
func (l *listWriter) WriteHeader(code int)        { l.code = code }
func (l *listWriter) Write(p []byte) (int, error) { return l.buf.Write(p) }

// Flush lets a handler that streams its answer run; the answer is sent
// once filtered.
func (l *listWriter) Flush() {}

// writeFiltered sends a list answer with only the items c may call: a
// JSON body, or each data line of an event stream. An answer that cannot
// be read is not sent: an unfiltered list would show what the caller may
// not call.
func (a *Auth) writeFiltered(w http.ResponseWriter, l *listWriter, c *Caller, field, call, key string, id json.RawMessage) {
	keep := func(name string) bool {
		return a.cfg.Authorizer(c, &Operation{Kind: KindMCP, MCPMethod: call, Name: name}).Allowed
	}
	var out []byte
	var err error
	ct := l.header.Get("Content-Type")
	switch {
	case l.code != http.StatusOK:
		out = l.buf.Bytes()
	case strings.HasPrefix(ct, "text/event-stream"):
		out, err = filterStream(l.buf.Bytes(), field, key, keep)
	default:
		out, err = filterMessage(l.buf.Bytes(), field, key, keep)
	}
	if err != nil {
		rf := &refusal{code: http.StatusBadGateway, reason: "unfilterable_list", detail: "the server's list answer could not be filtered: " + err.Error()}
		a.count(rf.reason)
		a.writeRPCRefusal(w, id, -32603, rf)
		return
	}
	for k, vs := range l.header {
		w.Header()[k] = vs
	}
	w.Header().Del("Content-Length")
	w.WriteHeader(l.code)
	_, _ = w.Write(out)
}

// filterMessage filters the items of result.<field> of one JSON-RPC
// message; a message without that result (an error) is kept as it is.
func filterMessage(data []byte, field, key string, keep func(string) bool) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, err
	}
	raw, ok := top["result"]
	if !ok {
		return data, nil
	}
	var result map[string]json.RawMessage
	if err := json.Unmarshal(raw, &result); err != nil {
		return nil, fmt.Errorf("result: %w", err)
	}
	var items []json.RawMessage
	if list, ok := result[field]; ok {
		if err := json.Unmarshal(list, &items); err != nil {
			return nil, fmt.Errorf("result.%s: %w", field, err)
		}
	}
	kept := make([]json.RawMessage, 0, len(items))
	for _, it := range items {
		var named map[string]json.RawMessage
		var name string
		if json.Unmarshal(it, &named) != nil || json.Unmarshal(named[key], &name) != nil {
			continue // an item without a name cannot be allowed
		}
		if keep(name) {
			kept = append(kept, it)
		}
	}
	if result[field], raw = mustJSON(kept), nil; raw == nil {
		top["result"] = mustJSON(result)
	}
	return json.Marshal(top)
}

func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v) // maps and slices of RawMessage always encode
	return b
}

// filterStream filters every data line of an event stream that holds a
// JSON-RPC message.
func filterStream(data []byte, field, key string, keep func(string) bool) ([]byte, error) {
	lines := strings.Split(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n")
	var out strings.Builder
	for i, line := range lines {
		if payload, ok := strings.CutPrefix(line, "data:"); ok {
			payload = strings.TrimPrefix(payload, " ")
			if strings.HasPrefix(strings.TrimSpace(payload), "{") {
				f, err := filterMessage([]byte(payload), field, key, keep)
				if err != nil {
					return nil, err
				}
				line = "data: " + string(f)
			}
		}
		out.WriteString(line)
		if i < len(lines)-1 {
			out.WriteByte('\n')
		}
	}
	return []byte(out.String()), nil
}
