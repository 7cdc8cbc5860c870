package meshapi

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// TestWire pins every body's field names, and their order, to what meshd
// has sent: a rename here breaks deployed clients. Each value goes through
// JSON and back unchanged.
func TestWire(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 21, 22, 40, 0, 0, time.UTC)
	issued := IssuedCert{Certificate: "LEAF", Chain: "CHAIN", Serial: "9fa1", NotAfter: at}
	agent := IssuedCert{AgentID: "opus", Certificate: "LEAF2", Serial: "b", NotAfter: at}
	for _, tc := range []struct {
		name string
		v    any // a pointer to a populated value
		want string
	}{
		{"ErrorResponse", &ErrorResponse{Error: "no", Reason: "revoked", Timestamp: "2026-11-21T22:40:00Z"},
			`{"error":"no","reason":"revoked","timestamp":"2026-11-21T22:40:00Z"}`},
		{"ErrorResponse without reason", &ErrorResponse{Error: "no", Timestamp: "t"},
			`{"error":"no","timestamp":"t"}`},
		{"EnrollRequest", &EnrollRequest{NodeID: "ct112", CSR: "CSR"},
			`{"node_id":"ct112","csr":"CSR"}`},
		{"AgentCertRequest", &AgentCertRequest{AgentID: "opus", CSR: "CSR"},
			`{"agent_id":"opus","csr":"CSR"}`},
		{"IssuedCert", &issued,
			`{"certificate":"LEAF","chain":"CHAIN","serial":"9fa1","not_after":"2026-11-21T22:40:00Z"}`},
		{"IssuedCert with renew_after", &IssuedCert{Certificate: "LEAF", Serial: "9fa1", NotAfter: at, RenewAfter: at.Add(-time.Hour)},
			`{"certificate":"LEAF","serial":"9fa1","not_after":"2026-11-21T22:40:00Z","renew_after":"2026-11-21T21:40:00Z"}`},
		{"TaintEvent", &TaintEvent{IssuerKeyID: "a1b2", Time: at},
			`{"issuer_key_id":"a1b2","time":"2026-11-21T22:40:00Z"}`},
		{"IssuedCert of an agent", &agent,
			`{"agent_id":"opus","certificate":"LEAF2","serial":"b","not_after":"2026-11-21T22:40:00Z"}`},
		{"RenewRequest", &RenewRequest{CSR: "CSR", Agents: []AgentCertRequest{{AgentID: "opus", CSR: "A"}}},
			`{"csr":"CSR","agents":[{"agent_id":"opus","csr":"A"}]}`},
		{"RenewRequest without agents", &RenewRequest{CSR: "CSR"},
			`{"csr":"CSR"}`},
		{"RenewResponse", &RenewResponse{IssuedCert: issued, Agents: []IssuedCert{agent}},
			`{"certificate":"LEAF","chain":"CHAIN","serial":"9fa1","not_after":"2026-11-21T22:40:00Z",` +
				`"agents":[{"agent_id":"opus","certificate":"LEAF2","serial":"b","not_after":"2026-11-21T22:40:00Z"}]}`},
		{"RenewResponse without agents", &RenewResponse{IssuedCert: issued, Agents: []IssuedCert{}},
			`{"certificate":"LEAF","chain":"CHAIN","serial":"9fa1","not_after":"2026-11-21T22:40:00Z","agents":[]}`},
		{"RevocationEvent of a certificate", &RevocationEvent{Seq: 42, Serial: "9fa1", IssuerKeyID: "a1b2", CommonName: "opus@ct111", Reason: "keyCompromise", Time: at},
			`{"seq":42,"serial":"9fa1","issuer_key_id":"a1b2","common_name":"opus@ct111","reason":"keyCompromise","time":"2026-11-21T22:40:00Z"}`},
		{"RevocationEvent of an entity", &RevocationEvent{Seq: 43, Entity: "acme", Reason: "entity revoked", Time: at},
			`{"seq":43,"entity":"acme","reason":"entity revoked","time":"2026-11-21T22:40:00Z"}`},
		{"RevokeRequest", &RevokeRequest{Target: "opus@ct111", Reason: "keyCompromise"},
			`{"target":"opus@ct111","reason":"keyCompromise"}`},
		{"RevokeResponse", &RevokeResponse{Revoked: []RevokedCert{{Seq: 7, Serial: "9fa1", CommonName: "opus@ct111", IssuerKeyID: "a1b2", Reason: 1, RevokedAt: at}}, Warning: "CRL not rebuilt"},
			`{"revoked":[{"Seq":7,"Serial":"9fa1","CommonName":"opus@ct111","IssuerKeyID":"a1b2","Reason":1,"RevokedAt":"2026-11-21T22:40:00Z","KeyHash":""}],"warning":"CRL not rebuilt"}`},
		{"RevokeResponse without warning", &RevokeResponse{Revoked: []RevokedCert{}},
			`{"revoked":[]}`},
		{"EntityInfo", &EntityInfo{Name: "acme", Subject: "CN=acme CA", Expires: "2026-11-21", NotAfter: at, Fingerprint: "ff", Source: "meshd", Status: "revoked", RevokedAt: &at, Agents: 2, Namespace: "ids:acme-a,weather-agent-1"},
			`{"name":"acme","subject":"CN=acme CA","expires":"2026-11-21","not_after":"2026-11-21T22:40:00Z","fingerprint_sha256":"ff","source":"meshd","status":"revoked","revoked_at":"2026-11-21T22:40:00Z","agents":2,"namespace":"ids:acme-a,weather-agent-1"}`},
		{"EntityList", &EntityList{Entities: []EntityInfo{{Name: "acme", Subject: "S", Expires: "E", NotAfter: at, Fingerprint: "ff", Source: "filestore", Status: "active", Namespace: "prefix"}}},
			`{"entities":[{"name":"acme","subject":"S","expires":"E","not_after":"2026-11-21T22:40:00Z","fingerprint_sha256":"ff","source":"filestore","status":"active","agents":0,"namespace":"prefix"}]}`},
		{"EntityList empty", &EntityList{Entities: []EntityInfo{}},
			`{"entities":[]}`},
		{"RegisterEntityRequest", &RegisterEntityRequest{Name: "acme", CACert: "PEM", Force: true},
			`{"name":"acme","ca_cert":"PEM","force":true}`},
		{"RegisterEntityResponse", &RegisterEntityResponse{Expires: "2026-11-21", Fingerprint: "ff", Message: "Entity 'acme' registered", Name: "acme", Subject: "CN=acme CA"},
			`{"expires":"2026-11-21","fingerprint_sha256":"ff","message":"Entity 'acme' registered","name":"acme","subject":"CN=acme CA"}`},
		{"RevokeEntityResponse", &RevokeEntityResponse{ClosedConnections: 3, EvictedAgents: 2, Message: "m", Name: "acme"},
			`{"closed_connections":3,"evicted_agents":2,"message":"m","name":"acme"}`},
		{"RotateResponse", &RotateResponse{AffectedAgents: 4, EntityID: "acme", Message: "m"},
			`{"affected_agents":4,"entity_id":"acme","message":"m"}`},
		{"RotateResponse of all agents", &RotateResponse{Message: "m"},
			`{"affected_agents":0,"entity_id":"","message":"m"}`},
		{"TokenRequest", &TokenRequest{NodeID: "ct112", TTL: "1h0m0s"},
			`{"node_id":"ct112","ttl":"1h0m0s"}`},
		{"TokenResponse", &TokenResponse{Token: "mtj_x", NodeID: "ct112", ExpiresAt: at, RootFingerprint: "ff"},
			`{"token":"mtj_x","node_id":"ct112","expires_at":"2026-11-21T22:40:00Z","root_fingerprint":"ff"}`},
		{"SessionAttachRequest", &SessionAttachRequest{AgentID: "opus"}, `{"agent_id":"opus"}`},
		{"SessionAttachResponse", &SessionAttachResponse{Token: "t", TokenType: "Bearer", SessionID: "s", AgentID: "opus", Identity: "opus@ct111", ExpiresAt: at},
			`{"token":"t","token_type":"Bearer","session_id":"s","agent_id":"opus","identity":"opus@ct111","expires_at":"2026-11-21T22:40:00Z"}`},
		{"SessionKeyRotateResponse", &SessionKeyRotateResponse{KeyID: "k"}, `{"key_id":"k"}`},
		{"Policy", &Policy{Name: "meshd", Document: "rules: []", Rules: 0}, `{"name":"meshd","document":"rules: []"}`},
		{"PolicyCheckRequest", &PolicyCheckRequest{Identity: "opus@ct111", Operation: "GET /agents"}, `{"identity":"opus@ct111","operation":"GET /agents"}`},
		{"PolicyCheckResponse", &PolicyCheckResponse{Allowed: true, Rule: "r"}, `{"allowed":true,"rule":"r"}`},
		{"Status", &Status{Service: "meshd", Version: "0.3.0", Time: at, UptimeSeconds: 60, Health: "degraded",
			Degraded: []Degradation{{Component: "trust backend spire", Reason: "stale_trust", Since: at}},
			CA: &StatusCA{Root: StatusCACert{Subject: "CN=root", NotAfter: at, DaysLeft: 3650}, Active: StatusCACert{Subject: "CN=int", NotAfter: at, DaysLeft: 1800},
				Prepared: &StatusCACert{Subject: "CN=next", NotAfter: at, DaysLeft: 1825}},
			CRL:    &StatusCRL{Number: "7", ThisUpdate: at, NextUpdate: at, AgeSeconds: 30},
			Agents: StatusAgents{Total: 3, ByStatus: map[string]int{"healthy": 2, "evicted": 1}, ByEntity: []StatusGroup{{Name: "", Agents: 2}}, BySource: []StatusGroup{{Name: "localca", Agents: 2}}},
			Certificates: &StatusCertificates{Live: 4, RenewalDue: 1, ExpiringSoon: 1, ExpiringWithinDays: 7,
				Due: []StatusDueCert{{CommonName: "opus@ct111", Serial: "9fa1", NotAfter: at}}},
			Audit:    StatusAudit{VerifiedAt: at, OnRequest: true, OK: false, Entries: 12, Checkpoints: 2, Error: "broken"},
			Feed:     StatusFeed{Pending: 1, LastPoll: &at, SinceLastPollSeconds: 0.5},
			Problems: []StatusProblem{{Component: "audit", Severity: "error", Message: "m"}}},
			`{"service":"meshd","version":"0.3.0","time":"2026-11-21T22:40:00Z","uptime_seconds":60,"health":"degraded",` +
				`"degraded":[{"component":"trust backend spire","reason":"stale_trust","since":"2026-11-21T22:40:00Z"}],` +
				`"ca":{"root":{"subject":"CN=root","not_after":"2026-11-21T22:40:00Z","days_left":3650},"active_intermediate":{"subject":"CN=int","not_after":"2026-11-21T22:40:00Z","days_left":1800},` +
				`"prepared_intermediate":{"subject":"CN=next","not_after":"2026-11-21T22:40:00Z","days_left":1825}},` +
				`"crl":{"number":"7","this_update":"2026-11-21T22:40:00Z","next_update":"2026-11-21T22:40:00Z","age_seconds":30},` +
				`"agents":{"total":3,"by_status":{"evicted":1,"healthy":2},"by_entity":[{"name":"","agents":2}],"by_source":[{"name":"localca","agents":2}]},` +
				`"certificates":{"live":4,"renewal_due":1,"expiring_soon":1,"expiring_within_days":7,"due":[{"common_name":"opus@ct111","serial":"9fa1","not_after":"2026-11-21T22:40:00Z"}]},` +
				`"audit":{"verified_at":"2026-11-21T22:40:00Z","on_request":true,"ok":false,"entries":12,"checkpoints":2,"error":"broken"},` +
				`"feed":{"pending":1,"last_poll":"2026-11-21T22:40:00Z","since_last_poll_seconds":0.5},` +
				`"problems":[{"component":"audit","severity":"error","message":"m"}]}`},
		{"Status without a CA, healthy", &Status{Service: "meshd", Version: "0.3.0", Time: at, Health: "healthy",
			Agents: StatusAgents{ByStatus: map[string]int{}, ByEntity: []StatusGroup{}, BySource: []StatusGroup{}},
			Audit:  StatusAudit{VerifiedAt: at, OnRequest: true, OK: true}, Problems: []StatusProblem{}},
			`{"service":"meshd","version":"0.3.0","time":"2026-11-21T22:40:00Z","uptime_seconds":0,"health":"healthy",` +
				`"agents":{"total":0,"by_status":{},"by_entity":[],"by_source":[]},` +
				`"audit":{"verified_at":"2026-11-21T22:40:00Z","on_request":true,"ok":true,"entries":0,"checkpoints":0},` +
				`"feed":{"pending":0,"since_last_poll_seconds":0},"problems":[]}`},
		{"Registration", &Registration{AgentID: "weather", Name: "w", Version: "1.0.0", AgentType: "mcp_agent", Runtime: "python", Description: "d",
			HTTPHost: "10.0.0.7", HTTPPort: 9443, Namespace: "prod", A2AProducer: true, A2AConsumer: true,
			Tools: []Tool{{FunctionName: "ask", Capability: "chat", Version: "2.0.0", Tags: []string{"a"}, Description: "t",
				InputSchema: json.RawMessage(`{"type":"object"}`), Dependencies: []Dependency{{Capability: "geo", Tags: []string{"maps"}, Version: "1.x", Namespace: "n"}},
				LLMFilter: &LLMFilter{Filter: []FilterItem{{Dependency{Capability: "weather"}}}, Mode: "all"}, LLMProvider: &Dependency{Capability: "llm"}}}},
			`{"agent_id":"weather","name":"w","version":"1.0.0","agent_type":"mcp_agent","runtime":"python","description":"d","http_host":"10.0.0.7","http_port":9443,"namespace":"prod",` +
				`"tools":[{"function_name":"ask","capability":"chat","version":"2.0.0","tags":["a"],"description":"t","inputSchema":{"type":"object"},` +
				`"dependencies":[{"capability":"geo","tags":["maps"],"version":"1.x","namespace":"n"}],"llm_filter":{"filter":[{"capability":"weather"}],"filter_mode":"all"},"llm_provider":{"capability":"llm"}}],` +
				`"a2a_producer":true,"a2a_consumer":true}`},
		{"Registration, only the id", &Registration{AgentID: "weather"}, `{"agent_id":"weather"}`},
		{"HeartbeatResponse", &HeartbeatResponse{AgentID: "weather", Status: "success", Message: "m", Rotate: true,
			DependenciesResolved: map[string][]Resolution{"ask": {{AgentID: "geo", Capability: "geo", Endpoint: "https://10.0.0.1:9000", FunctionName: "where", Status: "available"}}},
			Timestamp:            "2026-11-21T22:40:00Z"},
			`{"agent_id":"weather","status":"success","message":"m","rotate":true,"dependencies_resolved":{"ask":[{"agent_id":"geo","capability":"geo","endpoint":"https://10.0.0.1:9000","function_name":"where","status":"available"}]},"llm_tools":{},"timestamp":"2026-11-21T22:40:00Z"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := json.Marshal(tc.v)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("encoded\n got %s\nwant %s", got, tc.want)
			}
			back := reflect.New(reflect.TypeOf(tc.v).Elem())
			if err := json.Unmarshal([]byte(tc.want), back.Interface()); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back.Interface(), tc.v) {
				t.Errorf("decoded %+v, want %+v", back.Elem(), reflect.ValueOf(tc.v).Elem())
			}
		})
	}
}
