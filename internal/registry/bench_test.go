package registry

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/trust"
)

// benchMesh registers providers agents offering geocode and consumers
// agents with two dependencies each, and returns the registry with the
// first consumer's certificate and body.
func benchMesh(b *testing.B, providers, consumers int) (*Registry, *trust.Peer, []byte) {
	b.Helper()
	ctx := context.Background()
	r, err := New(ctx, newMemStore(), Config{Timeout: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	for i := range providers {
		id := fmt.Sprintf("geo-%d", i)
		body := fmt.Sprintf(`{"agent_id":%q,"http_host":"10.0.0.2","http_port":9000,"tools":[{"function_name":"geocode","capability":"geocode","tags":["maps"]}]}`, id)
		if _, err := r.heartbeatBody(ctx, peerFor(b, id+"@n0"), []byte(body)); err != nil {
			b.Fatal(err)
		}
	}
	var (
		first     *trust.Peer
		firstBody []byte
	)
	for i := range consumers {
		id := fmt.Sprintf("weather-%d", i)
		body := []byte(fmt.Sprintf(`{"agent_id":%q,"http_host":"10.0.0.1","http_port":9100,"tools":[{"function_name":"forecast","capability":"weather","dependencies":[{"capability":"geocode","tags":["maps"]},{"capability":"notify"}]}]}`, id))
		p := peerFor(b, id+"@n1")
		if _, err := r.heartbeatBody(ctx, p, body); err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			first, firstBody = p, body
		}
	}
	return r, first, firstBody
}

// BenchmarkUnchangedHeartbeatBody is POST /heartbeat of an unchanged body:
// the hot path, answered from memory.
func BenchmarkUnchangedHeartbeatBody(b *testing.B) {
	r, p, body := benchMesh(b, 100, 100)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.heartbeatBody(ctx, p, body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnchangedHeartbeat is Heartbeat of an unchanged, parsed
// registration.
func BenchmarkUnchangedHeartbeat(b *testing.B) {
	r, p, body := benchMesh(b, 100, 100)
	reg, payload, err := ParseRegistration(body)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Heartbeat(ctx, p, reg, payload); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkList is GET /agents of 200 agents with nothing changed.
func BenchmarkList(b *testing.B) {
	r, _, _ := benchMesh(b, 100, 100)
	b.ReportAllocs()
	for b.Loop() {
		r.List(Filter{})
	}
}

// BenchmarkListAfterTopologyChange is GET /agents right after every
// change of the topology: the resolution is computed again.
func BenchmarkListAfterTopologyChange(b *testing.B) {
	r, _, _ := benchMesh(b, 100, 100)
	b.ReportAllocs()
	for b.Loop() {
		r.topology.Add(1)
		r.List(Filter{})
	}
}
