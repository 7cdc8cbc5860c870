// Package bench holds meshtrust's benchmark harness: the programs under
// cmd/, the scripts heartbeat.sh and run.sh, and Go benchmarks of meshd's
// internals that explain what the end-to-end figures show.
package bench

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/identity"
	"github.com/meshtrust/meshtrust/internal/registry"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/trust"
)

// nopStore is the registry's Store keeping nothing: these benchmarks measure
// the registry's memory path, not the disk.
type nopStore struct{}

func (nopStore) PutAgents(context.Context, []store.Agent) error { return nil }
func (nopStore) UpdateAgent(context.Context, store.Agent) error { return nil }
func (nopStore) PutAgentAudited(context.Context, store.Agent, store.AuditEntry) error {
	return nil
}
func (nopStore) DeleteAgent(context.Context, string, store.AuditEntry) error { return nil }
func (nopStore) Agents(context.Context) ([]store.Agent, error)               { return nil, nil }

func agentPeer(b *testing.B, i int, id string) *trust.Peer {
	ident, err := identity.NewAgent(id, "bench")
	if err != nil {
		b.Fatal(err)
	}
	leaf := &x509.Certificate{Subject: pkix.Name{CommonName: ident.CommonName()}, SerialNumber: big.NewInt(int64(i + 1)),
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	return &trust.Peer{Leaf: leaf, Fingerprint: fmt.Sprintf("%064x", i+1), Serial: fmt.Sprintf("%x", i+1), Identity: ident}
}

func register(b *testing.B, r *registry.Registry, p *trust.Peer, body string) registry.Result {
	reg, payload, err := registry.ParseRegistration([]byte(body))
	if err != nil {
		b.Fatal(err)
	}
	res, err := r.Heartbeat(context.Background(), p, reg, payload)
	if err != nil {
		b.Fatal(err)
	}
	return res
}

// BenchmarkUnchangedHeartbeatProviders measures an unchanged heartbeat
// (registry.Heartbeat, payload already parsed) of an agent with one
// dependency, as the number of agents offering that capability grows.
// Dependency resolution runs on every heartbeat and visits every provider
// of the capability, so the cost grows with the providers; compare the
// sub-benchmarks' ns/op with providers=1.
func BenchmarkUnchangedHeartbeatProviders(b *testing.B) {
	for _, n := range []int{1, 100, 10_000} {
		b.Run(fmt.Sprintf("providers=%d", n), func(b *testing.B) {
			r, err := registry.New(context.Background(), nopStore{}, registry.Config{Timeout: time.Hour})
			if err != nil {
				b.Fatal(err)
			}
			for i := range n {
				id := fmt.Sprintf("geo-agent-%d", i)
				register(b, r, agentPeer(b, i, id), fmt.Sprintf(`{"agent_id":%q,"http_host":"127.0.0.1","http_port":9000,"tools":[{"function_name":"geocode","capability":"geocode","tags":["maps"]}]}`, id))
			}
			consumer := `{"agent_id":"weather-agent-1","http_host":"127.0.0.1","http_port":9101,"tools":[{"function_name":"get_forecast","capability":"weather_forecast","dependencies":[{"capability":"geocode","tags":["maps"]}]}]}`
			p := agentPeer(b, n, "weather-agent-1")
			res := register(b, r, p, consumer)
			if got := res.Resolved["get_forecast"]; len(got) != 1 || got[0].Status != "available" {
				b.Fatalf("resolution %+v, want geocode available", res.Resolved)
			}
			reg, payload, _ := registry.ParseRegistration([]byte(consumer))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := r.Heartbeat(context.Background(), p, reg, payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
