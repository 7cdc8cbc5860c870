// Command replicas measures meshd on PostgreSQL against the SQLite single
// node, in one run: heartbeats per second and issuances per second with
// one and with two replicas on one PostgreSQL, against one meshd on its
// SQLite file; and the latency from a revocation on one replica to the
// agent's connection to the other being closed (p50, p99).
//
// Every meshd runs in this process (server.New and Start, as the other
// benchmarks run it), TLS strict on 127.0.0.1; two replicas are two
// servers, each with its own store handle (its own connection pool,
// writer and LISTEN connection) on the same database and CA directory.
//
//   - heartbeats: -agents agents, each on its own keep-alive mTLS
//     connection, send HEAD /heartbeat/<id> (MCP Mesh's liveness path,
//     served from memory) back to back for -dur; with two replicas the
//     agents are split between them.
//   - issuance: -c nodes POST /agent-cert back to back for -dur, each a
//     fresh CSR: signed, and recorded durably (one group commit) before
//     the answer.
//   - revocation: -rev times, an agent registered and connected to
//     replica B is revoked through replica A's admin API; the time until
//     B closes the agent's connection.
//
// PostgreSQL is MESHTRUST_POSTGRES_URL's, or one scripts/postgres.sh
// starts (and stops) for the run; each configuration gets a schema of its
// own.
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshtrust/meshtrust/bench/internal/benchmesh"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/meshapi"
)

type options struct {
	agents, conc, rev int
	dur               time.Duration
}

func main() {
	var o options
	flag.IntVar(&o.agents, "agents", 64, "agents heartbeating, one connection each")
	flag.IntVar(&o.conc, "c", 16, "concurrent issuance clients")
	flag.IntVar(&o.rev, "rev", 100, "cross-replica revocations to time")
	flag.DurationVar(&o.dur, "dur", 5*time.Second, "length of each throughput measurement")
	flag.Parse()
	benchmesh.Main("replicas", 10*time.Minute, func(ctx context.Context) error { return run(ctx, o) })
}

func run(ctx context.Context, o options) error {
	dsn, stop, err := benchmesh.PostgresURL(ctx)
	if err != nil {
		return err
	}
	defer stop()
	type result struct {
		name        string
		hb, iss     float64
		issueFailed int64
	}
	var results []result
	for _, c := range []struct {
		name     string
		pg       bool
		replicas int
	}{{"sqlite, 1 node", false, 1}, {"postgres, 1 replica", true, 1}, {"postgres, 2 replicas", true, 2}} {
		db := ""
		if c.pg {
			if db, err = benchmesh.Schema(ctx, dsn); err != nil {
				return err
			}
		}
		m, servers, err := startMesh(ctx, db, c.replicas)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		hb, err := heartbeats(ctx, m, servers, o)
		if err != nil {
			m.Close()
			return fmt.Errorf("%s: heartbeats: %w", c.name, err)
		}
		iss, failed, err := issuance(ctx, m, servers, o)
		if err != nil {
			m.Close()
			return fmt.Errorf("%s: issuance: %w", c.name, err)
		}
		results = append(results, result{c.name, hb, iss, failed})
		fmt.Printf("%-22s heartbeats/s %8.0f   issuance/s %6.1f   (failed issuances %d)\n", c.name, hb, iss, failed)
		if c.replicas == 2 {
			lat, err := crossRevocation(ctx, m, servers, o.rev)
			if err != nil {
				m.Close()
				return fmt.Errorf("%s: revocation: %w", c.name, err)
			}
			fmt.Printf("%-22s cross-replica revocation to disconnect: n=%d p50 %.1f ms  p99 %.1f ms  max %.1f ms  (failed %d)\n",
				c.name, lat.N, lat.P50, lat.P99, lat.Max, lat.Failed)
		}
		if err := m.Close(); err != nil {
			return fmt.Errorf("%s: close: %w", c.name, err)
		}
	}
	base := results[0]
	fmt.Println("ratios against the SQLite single node, same run:")
	for _, r := range results[1:] {
		fmt.Printf("  %-22s heartbeats %.2f   issuance %.2f\n", r.name, r.hb/base.hb, r.iss/base.iss)
	}
	return nil
}

// server is one meshd of a configuration: its agent port and admin client.
type server struct {
	addr  string
	admin *http.Client
}

func startMesh(ctx context.Context, db string, replicas int) (*benchmesh.Mesh, []server, error) {
	dir, err := os.MkdirTemp("", "meshtrust-bench-replicas")
	if err != nil {
		return nil, nil, err
	}
	m, err := benchmesh.Start(ctx, dir, benchmesh.Config{Database: db, AgentCertBurst: 1 << 30, MaxAgentsPerNode: 1 << 30})
	if err != nil {
		return nil, nil, err
	}
	servers := []server{{m.Addr(), m.Admin}}
	for i := 1; i < replicas; i++ {
		r, err := m.AddReplica(ctx)
		if err != nil {
			m.Close()
			return nil, nil, err
		}
		sock := filepath.Join(dir, fmt.Sprintf("admin-%d.sock", i))
		servers = append(servers, server{r.Server.AgentAddr(), adminClient(sock)})
	}
	return m, servers, nil
}

func adminClient(sock string) *http.Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

func client(m *benchmesh.Mesh, cert tls.Certificate) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1,
		TLSClientConfig: &tls.Config{RootCAs: m.Roots, Certificates: []tls.Certificate{cert}, ServerName: "localhost"}}}
}

func do(c *http.Client, method, url string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out, nil
}

// heartbeats registers o.agents agents, split across servers, and returns
// the HEAD /heartbeat rate they reach together.
func heartbeats(ctx context.Context, m *benchmesh.Mesh, servers []server, o options) (float64, error) {
	clients := make([]*http.Client, o.agents)
	for i := range clients {
		cert, err := m.ClientCert(ctx, fmt.Sprintf("hb%d", i))
		if err != nil {
			return 0, err
		}
		clients[i] = client(m, cert)
		srv := servers[i%len(servers)]
		if code, body, err := do(clients[i], "POST", "https://"+srv.addr+"/heartbeat", map[string]any{"agent_id": fmt.Sprintf("hb%d", i), "http_port": 9000}); err != nil || code >= 300 {
			return 0, fmt.Errorf("register hb%d: %d %s %v", i, code, body, err)
		}
	}
	var n, bad atomic.Int64
	deadline := time.Now().Add(o.dur)
	var wg sync.WaitGroup
	for i, c := range clients {
		srv := servers[i%len(servers)]
		wg.Go(func() {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				code, _, err := do(c, "HEAD", fmt.Sprintf("https://%s/heartbeat/hb%d", srv.addr, i), nil)
				if err != nil || code != http.StatusOK && code != http.StatusAccepted {
					bad.Add(1)
					continue
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if bad.Load() > 0 {
		return 0, fmt.Errorf("%d heartbeats refused", bad.Load())
	}
	return float64(n.Load()) / o.dur.Seconds(), nil
}

// issuance has o.conc nodes, split across servers, obtain agent
// certificates back to back, and returns the rate.
func issuance(ctx context.Context, m *benchmesh.Mesh, servers []server, o options) (float64, int64, error) {
	var n, failed atomic.Int64
	deadline := time.Now().Add(o.dur)
	var wg sync.WaitGroup
	errs := make(chan error, o.conc)
	for w := range o.conc {
		node := fmt.Sprintf("bn%d", w)
		is, err := m.CA.Sign(ctx, ca.NodeRequest(node), ca.WithGeneratedKey())
		if err != nil {
			return 0, 0, err
		}
		cn := is.Cert.Subject.CommonName
		cert, err := tls.LoadX509KeyPair(m.CA.Config().IssuedCertPath(cn), m.CA.Config().IssuedKeyPath(cn))
		if err != nil {
			return 0, 0, err
		}
		c := client(m, cert)
		srv := servers[w%len(servers)]
		// Keys and CSRs are made before the clock starts: the benchmark
		// measures meshd, not the client's key generation.
		csrs := make([]string, 0, 512)
		for i := range cap(csrs) {
			csr, err := agentCSR(fmt.Sprintf("a%d@%s", i, node))
			if err != nil {
				return 0, 0, err
			}
			csrs = append(csrs, csr)
		}
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				code, body, err := do(c, "POST", "https://"+srv.addr+"/agent-cert",
					meshapi.AgentCertRequest{AgentID: fmt.Sprintf("a%d", i%len(csrs)), CSR: csrs[i%len(csrs)]})
				if err != nil || code != http.StatusCreated {
					if failed.Add(1) > 100 {
						errs <- fmt.Errorf("agent-cert: %d %s %v", code, body, err)
						return
					}
					continue
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	return float64(n.Load()) / o.dur.Seconds(), failed.Load(), nil
}

func agentCSR(cn string) (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// crossRevocation times, n times, a revocation through servers[0]'s admin
// API until servers[1] closes the revoked agent's connection.
func crossRevocation(ctx context.Context, m *benchmesh.Mesh, servers []server, n int) (benchmesh.Stats, error) {
	a, b := servers[0], servers[1]
	var lat []time.Duration
	failed := 0
	for i := range n {
		id := fmt.Sprintf("rv%d", i)
		is, err := m.CA.Sign(ctx, ca.AgentRequest(id, "bench"), ca.WithGeneratedKey())
		if err != nil {
			return benchmesh.Stats{}, err
		}
		cn := is.Cert.Subject.CommonName
		cert, err := tls.LoadX509KeyPair(m.CA.Config().IssuedCertPath(cn), m.CA.Config().IssuedKeyPath(cn))
		if err != nil {
			return benchmesh.Stats{}, err
		}
		conn, err := tls.Dial("tcp", b.addr, &tls.Config{RootCAs: m.Roots, Certificates: []tls.Certificate{cert}, ServerName: "localhost"})
		if err != nil {
			return benchmesh.Stats{}, err
		}
		body := fmt.Sprintf(`{"agent_id":%q,"http_port":9000}`, id)
		fmt.Fprintf(conn, "POST /heartbeat HTTP/1.1\r\nHost: meshd\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		buf := make([]byte, 8192)
		if _, err := conn.Read(buf); err != nil {
			conn.Close()
			return benchmesh.Stats{}, fmt.Errorf("register %s on B: %w", id, err)
		}
		closed := make(chan time.Time, 1)
		go func() {
			for {
				if _, err := conn.Read(buf); err != nil {
					closed <- time.Now()
					return
				}
			}
		}()
		start := time.Now()
		code, rb, err := do(a.admin, "POST", "http://meshd/admin/revoke", meshapi.RevokeRequest{Target: is.Record.Serial})
		if err != nil || code != http.StatusOK {
			conn.Close()
			return benchmesh.Stats{}, fmt.Errorf("revoke on A: %d %s %v", code, rb, err)
		}
		select {
		case at := <-closed:
			lat = append(lat, at.Sub(start))
		case <-time.After(5 * time.Second):
			failed++
		}
		conn.Close()
	}
	return benchmesh.Summarize(lat, failed), nil
}
