package meshauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
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
	// nameParam maps the methods a policy allows per name (never by
	// method) to the param holding the name.
	nameParam = map[string]string{"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
	// gatedBy maps the methods that act on a named resource or prompt,
	// but are allowed by method, to the param holding the name and the
	// call that must allow that name too: subscribing to a resource needs
	// leave to read it. completion/complete names its prompt or resource
	// in params.ref (parseRef).
	gatedBy = map[string]struct{ key, call string }{
		"resources/subscribe": {"uri", "resources/read"},
	}
	// listOf maps a list method to the result field holding its items,
	// the call method that gates each item and the item's name field.
	listOf = map[string]struct{ field, call, key string }{
		"tools/list":               {"tools", "tools/call", "name"},
		"prompts/list":             {"prompts", "prompts/get", "name"},
		"resources/list":           {"resources", "resources/read", "uri"},
		"resources/templates/list": {"resourceTemplates", "resources/read", "uriTemplate"},
	}
)

// MCP returns h, an MCP server's streamable HTTP endpoint, behind the
// middleware. The caller is identified before the body is read: one
// without an acceptable identity is refused at once, and so is one whose
// Mcp-Method (and Mcp-Name) headers name an operation it may not perform.
// Each POSTed JSON-RPC request is then authorized by its method and, for
// tools/call, prompts/get and resources/read, by the tool, prompt or
// resource it names (Operation KindMCP). resources/subscribe and
// completion/complete need their method allowed and also the resource or
// prompt they name (as resources/read or prompts/get). A resource URI
// that is not canonical (see ErrNotCanonical) is refused. tools/list,
// prompts/list, resources/list and resources/templates/list answers are
// filtered to what the caller may call, so the list and the call gate
// agree; a list answer goes out only if every message in it was read and
// filtered. Mcp-Method and Mcp-Name headers, when present, must match the
// body. Other HTTP methods (the GET of a server-to-client stream, the
// DELETE of a session) are authorized as KindHTTP operations. Refusals
// are JSON-RPC error objects.
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
		// Who is asking is settled before up to MaxBody bytes are read,
		// so a caller without an identity costs no more than its headers.
		c, gen, rf := a.identifyHTTP(r)
		if rf == nil {
			// The endpoint's own path too: h may route by it.
			if rf = notCanonicalPath(r); rf != nil {
				a.refused(&op, rf)
			}
		} else {
			a.refused(&op, rf)
		}
		if rf == nil {
			if hm, ok := headerMessage(r.Header); ok {
				rf = a.authorizeRPC(c, hm, false)
			}
		}
		if rf != nil {
			a.writeRPCRefusal(w, nil, rpcCode(rf), rf)
			return
		}
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
		if rf := headerMismatch(r.Header, msg); rf != nil {
			a.refused(&op, rf)
			a.writeRPCRefusal(w, msg.ID, rpcCode(rf), rf)
			return
		}
		if rf := a.authorizeRPC(c, msg, true); rf != nil {
			a.writeRPCRefusal(w, msg.ID, rpcCode(rf), rf)
			return
		}
		r = r.WithContext(withVerified(r.Context(), verifiedOf(c, gen, r.TLS)))
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

// authorizeRPC decides a JSON-RPC message: its method (with the name it
// names, for an Authorizer that looks), then, for a method gated by a
// name (msg.gate), that name as the call that reads it. A resource URI
// must be canonical. A response to the server needs no grant. Only the
// decision that counts (count) is counted as allowed; every refusal is.
func (a *Auth) authorizeRPC(c *Caller, msg rpcMessage, count bool) *refusal {
	if msg.Method == "" {
		return nil
	}
	op := Operation{Kind: KindMCP, MCPMethod: msg.Method, Name: msg.name}
	if msg.gate == "resources/read" {
		// A resource URI is compared as sent, and only once canonical:
		// the server behind reads exactly the URI a rule matched. The
		// caller chose it; no trust source vouches for it.
		if err := canonicalURI(msg.name); err != nil {
			rf := &refusal{code: http.StatusBadRequest, reason: ReasonNotCanonical, detail: fmt.Sprintf("%s: resource %q: %v", msg.Method, msg.name, err), cause: err}
			a.refused(&op, rf)
			return rf
		}
	}
	if rf := a.check(c, &op, count); rf != nil {
		return rf
	}
	if msg.gate == "" || msg.gate == msg.Method {
		return nil
	}
	return a.check(c, &Operation{Kind: KindMCP, MCPMethod: msg.gate, Name: msg.name}, false)
}

// check decides op; uncounted, an allowed operation is neither counted
// nor logged (it is one more check of a request counted once).
func (a *Auth) check(c *Caller, op *Operation, count bool) *refusal {
	if !count && a.cfg.Authorizer(c, op).Allowed {
		return nil
	}
	_, rf := a.decide(c, op)
	return rf
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
	// name is the tool, prompt or resource the method names; gate the
	// call that must allow it (tools/call, prompts/get, resources/read),
	// "" for a method allowed by method alone.
	name, gate string
}

// headerMessage is the message that a request's Mcp-Method and Mcp-Name
// headers announce, when they say enough to decide it before the body
// is read (the body must then match them: headerMismatch).
func headerMessage(h http.Header) (rpcMessage, bool) {
	ms, ok := h[HeaderMCPMethod]
	if !ok || len(ms) != 1 || ms[0] == "" {
		return rpcMessage{}, false
	}
	msg := rpcMessage{Method: ms[0]}
	if _, named := nameParam[msg.Method]; named {
		msg.gate = msg.Method
	} else if g, ok := gatedBy[msg.Method]; ok {
		msg.gate = g.call
	}
	ns, ok := h[HeaderMCPName]
	switch {
	case ok && len(ns) == 1:
		msg.name = ns[0]
	case msg.gate != "" || ok:
		return rpcMessage{}, false // the name is needed, and only the body has it
	}
	return msg, true
}

// rpcKeys are the keys parseRPC reads; any other spelling of them is
// refused, so that the middleware and the server behind it cannot read
// different members out of one body (encoding/json matches keys without
// regard to case, and keeps the last of duplicates).
var rpcKeys = []string{"jsonrpc", "id", "method", "params", "result", "error", "name", "uri", "ref", "type"}

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
	if err := strictObject(body, &top, rpcKeys); err != nil {
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
	if named {
		msg.gate = msg.Method
	} else if g, ok := gatedBy[msg.Method]; ok {
		key, msg.gate = g.key, g.call
	} else if msg.Method != "completion/complete" {
		return msg, 0, nil
	}
	var params map[string]json.RawMessage
	if err := strictObject(top["params"], &params, rpcKeys); err != nil {
		return msg, codeInvalidRequest, fmt.Errorf("%s needs \"params\" as an object: %w", msg.Method, err)
	}
	if msg.Method == "completion/complete" {
		var err error
		if params, key, msg.gate, err = parseRef(params["ref"]); err != nil {
			return msg, codeInvalidRequest, fmt.Errorf("completion/complete: params.ref: %w", err)
		}
	}
	if err := json.Unmarshal(params[key], &msg.name); err != nil || msg.name == "" {
		return msg, codeInvalidRequest, fmt.Errorf("%s needs params.%s, a non-empty string", msg.Method, key)
	}
	return msg, 0, nil
}

// parseRef reads completion/complete's params.ref: a prompt by name
// ({"type":"ref/prompt","name":...}) or a resource or resource template
// by URI ({"type":"ref/resource","uri":...}). It returns the ref's
// members, the key naming the target and the call that gates it.
func parseRef(raw json.RawMessage) (map[string]json.RawMessage, string, string, error) {
	var ref map[string]json.RawMessage
	if err := strictObject(raw, &ref, rpcKeys); err != nil {
		return nil, "", "", err
	}
	var typ string
	_ = json.Unmarshal(ref["type"], &typ)
	switch typ {
	case "ref/prompt":
		return ref, "name", "prompts/get", nil
	case "ref/resource":
		return ref, "uri", "resources/read", nil
	}
	return nil, "", "", fmt.Errorf(`type %s: want "ref/prompt" or "ref/resource"`, cmpStr(string(ref["type"]), "missing"))
}

func isIDJSON(id json.RawMessage) bool {
	return len(id) > 0 && (id[0] == '"' || id[0] == '-' || (id[0] >= '0' && id[0] <= '9'))
}

// strictObject decodes a JSON object into m, refusing duplicate keys and
// keys that differ from one of guard only by case.
func strictObject(data []byte, m *map[string]json.RawMessage, guard []string) error {
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
		for _, want := range guard {
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
// JSON body, or every event of an event stream, whatever the status. An
// answer that cannot be read entirely is not sent: an unfiltered list
// would show what the caller may not call.
func (a *Auth) writeFiltered(w http.ResponseWriter, l *listWriter, c *Caller, field, call, key string, id json.RawMessage) {
	keep := func(name string) bool {
		// A resource named otherwise than canonically is not shown: the
		// rule that would allow it compares a name its reader resolves
		// to another.
		if call == "resources/read" && canonicalURI(name) != nil {
			return false
		}
		return a.cfg.Authorizer(c, &Operation{Kind: KindMCP, MCPMethod: call, Name: name}).Allowed
	}
	out, err := filterAnswer(l.header.Get("Content-Type"), l.buf.Bytes(), field, key, keep)
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

// filterAnswer filters a list answer of content type ct: an event
// stream, or else one JSON-RPC message. An empty body (202, 204) holds
// nothing to filter.
func filterAnswer(ct string, body []byte, field, key string, keep func(string) bool) ([]byte, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return body, nil
	}
	if mt, _, err := mime.ParseMediaType(ct); err == nil && mt == "text/event-stream" {
		return filterStream(body, field, key, keep)
	}
	return filterMessage(body, field, key, keep)
}

// filterMessage filters the items of result.<field> of one JSON-RPC
// message; a message without a result (an error, a notification) is kept
// as it is. Duplicate keys, and keys spelled like the ones read in
// another case, are refused: the client behind must not read a member
// this filter did not.
func filterMessage(data []byte, field, key string, keep func(string) bool) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := strictObject(bytes.TrimSpace(data), &top, rpcKeys); err != nil {
		return nil, fmt.Errorf("not one JSON-RPC message: %w", err)
	}
	raw, ok := top["result"]
	if !ok {
		var c bytes.Buffer
		err := json.Compact(&c, data) // one line, as an event's data is written
		return c.Bytes(), err
	}
	var result map[string]json.RawMessage
	if err := strictObject(raw, &result, []string{field}); err != nil {
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
		if strictObject(it, &named, []string{key}) != nil || json.Unmarshal(named[key], &name) != nil {
			continue // an item without one plain name cannot be allowed
		}
		if keep(name) {
			kept = append(kept, it)
		}
	}
	result[field] = mustJSON(kept)
	top["result"] = mustJSON(result)
	return json.Marshal(top)
}

func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v) // maps and slices of RawMessage always encode
	return b
}

// filterStream filters every event of an event stream, read as the
// HTML event-stream format says a client reads it: lines end in CRLF, LF
// or a bare CR; a leading BOM is dropped; an event's data is its data
// lines joined by LF. Each event with data must hold one JSON-RPC message
// (filterMessage), written back as one data line; its other lines (event,
// id, retry, comments) are kept in order.
func filterStream(data []byte, field, key string, keep func(string) bool) ([]byte, error) {
	s := strings.TrimPrefix(string(data), "\uFEFF")
	var out strings.Builder
	var ev sseEvent
	for len(s) > 0 {
		i := strings.IndexAny(s, "\r\n")
		line := s
		if i < 0 {
			s = ""
		} else {
			line = s[:i]
			if strings.HasPrefix(s[i:], "\r\n") {
				s = s[i+2:]
			} else {
				s = s[i+1:]
			}
		}
		if line == "" {
			if err := ev.writeTo(&out, field, key, keep); err != nil {
				return nil, err
			}
			out.WriteByte('\n')
			ev = sseEvent{}
			continue
		}
		ev.add(line)
	}
	// An event the stream ends without a blank line after is dropped by
	// a client; it is filtered all the same.
	if err := ev.writeTo(&out, field, key, keep); err != nil {
		return nil, err
	}
	return []byte(out.String()), nil
}

// sseEvent is one event of a stream, as its lines.
type sseEvent struct {
	lines  []string
	data   []string // the values of its data lines
	dataAt int      // the index in lines of the first data line
}

func (e *sseEvent) add(line string) {
	name, value, _ := strings.Cut(line, ":")
	if name == "data" {
		if len(e.data) == 0 {
			e.dataAt = len(e.lines)
		}
		e.data = append(e.data, strings.TrimPrefix(value, " "))
	}
	e.lines = append(e.lines, line)
}

// writeTo writes the event with its data filtered. Data that is only
// whitespace (a stream's priming event) holds no message.
func (e *sseEvent) writeTo(out *strings.Builder, field, key string, keep func(string) bool) error {
	payload := strings.Join(e.data, "\n")
	if strings.TrimSpace(payload) == "" {
		for _, l := range e.lines {
			out.WriteString(l)
			out.WriteByte('\n')
		}
		return nil
	}
	f, err := filterMessage([]byte(payload), field, key, keep)
	if err != nil {
		return fmt.Errorf("event stream: %w", err)
	}
	for i, l := range e.lines {
		switch {
		case i == e.dataAt:
			out.WriteString("data: ")
			out.Write(f)
			out.WriteByte('\n')
		case strings.HasPrefix(l, "data:") || l == "data":
		default:
			out.WriteString(l)
			out.WriteByte('\n')
		}
	}
	return nil
}
