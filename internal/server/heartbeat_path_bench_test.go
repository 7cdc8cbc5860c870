package server_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"testing"

	"github.com/meshtrust/meshtrust/internal/server"
)

// BenchmarkHeartbeatPath is meshd's whole request path for the two
// heartbeats of a live agent over one kept-alive loopback mTLS connection,
// client included, with allocations: POST /heartbeat with the benchmark
// payload unchanged (bench/mcpmesh/heartbeat.json, the body
// bench/heartbeat.sh sends), and HEAD /heartbeat/{id}. Build the test
// binary of two trees and alternate them to compare one with the other
// (BENCHMARKS.md, "The heartbeat path at the bare-TLS limit").
func BenchmarkHeartbeatPath(b *testing.B) {
	raw, err := os.ReadFile("../../bench/mcpmesh/heartbeat.json")
	if err != nil {
		b.Fatal(err)
	}
	var payload map[string]any
	if err := json.Unmarshal(raw, &payload); err != nil {
		b.Fatal(err)
	}
	payload["agent_id"] = "weather-agent-1"
	body, err := json.Marshal(payload)
	if err != nil {
		b.Fatal(err)
	}
	e := newEnv(b, envOptions{mode: server.TLSStrict})
	cert, _ := agentCert(b, e.ca.auth, "weather-agent-1", "bench")
	c := e.client(&cert)
	post := func(b *testing.B) {
		resp, err := c.Post(e.baseURL()+"/heartbeat", "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("POST /heartbeat: %d", resp.StatusCode)
		}
	}
	post(b) // registers the agent
	head := e.baseURL() + "/heartbeat/weather-agent-1"
	b.Run("POST", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			post(b)
		}
	})
	b.Run("HEAD", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			resp, err := c.Head(head)
			if err != nil {
				b.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("HEAD: %d", resp.StatusCode)
			}
		}
	})
}
