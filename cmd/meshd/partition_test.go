package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/meshtrust/meshtrust/internal/eventually"
	"github.com/meshtrust/meshtrust/internal/logtest"
	"github.com/meshtrust/meshtrust/meshapi"
)

// requireNetns, when set (as CI sets it), makes the partition test fail
// where it would skip: not root, no ip command.
const requireNetns = "MESHTRUST_REQUIRE_NETNS"

// netlab is a set of network namespaces the test made: one for
// PostgreSQL, one per replica, each replica linked to PostgreSQL's
// namespace and to the test's own by a veth pair of its own. The test
// reaches the replicas and PostgreSQL through those links; cutting a
// replica's link to PostgreSQL leaves its link to the agents up.
type netlab struct {
	id string
	// net is the second octet of the 10.x.0.0/16 the links use.
	net int
	pg  string // PostgreSQL's namespace
	// replicas' namespaces and their end of the link to PostgreSQL.
	ns, pgLink []string
}

// ipRun runs ip (or, with a namespace, ip netns exec ns ...) and fails t
// on an error.
func ipRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// inNS runs cmd in namespace ns.
func inNS(t *testing.T, ns string, cmd ...string) {
	t.Helper()
	ipRun(t, append([]string{"netns", "exec", ns}, cmd...)...)
}

// needNetns skips t unless it can make network namespaces (root, ip),
// or fails it when requireNetns is set.
func needNetns(t *testing.T) {
	t.Helper()
	why := ""
	if runtime.GOOS != "linux" {
		why = "network namespaces are Linux's"
	} else if os.Geteuid() != 0 {
		why = "making network namespaces needs root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "no ip command (iproute2)"
	} else if _, err := user.Lookup("postgres"); err != nil {
		why = "no postgres user to run PostgreSQL as (scripts/postgres.sh install)"
	}
	if why == "" {
		return
	}
	if os.Getenv(requireNetns) != "" {
		t.Fatalf("%s and %s is set", why, requireNetns)
	}
	t.Skip(why)
}

// newNetlab makes the namespaces and links for n replicas, removed when t
// ends.
func newNetlab(t *testing.T, n int) *netlab {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	l := &netlab{id: hex.EncodeToString(b)}
	// A 10.x.0.0/16 no address or route of this machine uses.
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").CombinedOutput()
	if err != nil {
		t.Fatalf("ip route: %v\n%s", err, out)
	}
	addrs, _ := exec.Command("ip", "-4", "addr").CombinedOutput()
	used := string(out) + string(addrs)
	for i := 0; i < 50 && l.net == 0; i++ {
		x := 100 + int(b[0]+byte(i))%150
		if !strings.Contains(used, fmt.Sprintf("10.%d.", x)) {
			l.net = x
		}
	}
	if l.net == 0 {
		t.Fatal("no free 10.x.0.0/16 for the test's links")
	}
	l.pg = "mt" + l.id + "-pg"
	t.Cleanup(func() {
		// Every process in them was stopped by the cleanups that ran
		// before this one; deleting a namespace deletes its veths and
		// their peers.
		for _, ns := range append([]string{l.pg}, l.ns...) {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		}
	})
	ipRun(t, "netns", "add", l.pg)
	inNS(t, l.pg, "ip", "link", "set", "lo", "up")
	// The test's own link to PostgreSQL.
	l.veth(t, "", l.pg, "mt"+l.id+"tp", "mt"+l.id+"pt", 200)
	for i := range n {
		ns := fmt.Sprintf("mt%s-r%d", l.id, i)
		ipRun(t, "netns", "add", ns)
		l.ns = append(l.ns, ns)
		inNS(t, ns, "ip", "link", "set", "lo", "up")
		// Replica i to PostgreSQL: 10.x.(1+i).2 -> .1.
		l.pgLink = append(l.pgLink, fmt.Sprintf("mt%sr%dp", l.id, i))
		l.veth(t, ns, l.pg, l.pgLink[i], fmt.Sprintf("mt%sp%dr", l.id, i), 1+i)
		// The agents (this test) to replica i: 10.x.(100+i).1 -> .2.
		l.veth(t, "", ns, fmt.Sprintf("mt%st%dr", l.id, i), fmt.Sprintf("mt%sr%dt", l.id, i), 100+i)
	}
	return l
}

// veth links namespace a ("" the test's) to b by a veth pair named an
// (in a) and bn (in b), a at 10.x.sub.1 and b at 10.x.sub.2.
func (l *netlab) veth(t *testing.T, a, b, an, bn string, sub int) {
	t.Helper()
	ipRun(t, "link", "add", an, "type", "veth", "peer", "name", bn)
	ipRun(t, "link", "set", bn, "netns", b)
	if a != "" {
		ipRun(t, "link", "set", an, "netns", a)
	}
	cfg := func(ns, dev string, host int) {
		cmd := []string{"ip", "addr", "add", fmt.Sprintf("10.%d.%d.%d/24", l.net, sub, host), "dev", dev}
		up := []string{"ip", "link", "set", dev, "up"}
		if ns == "" {
			ipRun(t, cmd[1:]...)
			ipRun(t, up[1:]...)
			return
		}
		inNS(t, ns, cmd...)
		inNS(t, ns, up...)
	}
	cfg(a, an, 1)
	cfg(b, bn, 2)
}

// addr is host .h of link sub.
func (l *netlab) addr(sub, h int) string { return fmt.Sprintf("10.%d.%d.%d", l.net, sub, h) }

// pgAddrs are PostgreSQL's addresses: on the test's link, and on each
// replica's.
func (l *netlab) pgAddrs() []string {
	out := []string{l.addr(200, 2)}
	for i := range l.ns {
		out = append(out, l.addr(1+i, 2))
	}
	return out
}

// cut takes replica i's link to PostgreSQL down (up with up true), in its
// namespace: its packets to PostgreSQL go nowhere; its agents' link stays.
func (l *netlab) cut(t *testing.T, i int, up bool) {
	t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	inNS(t, l.ns[i], "ip", "link", "set", l.pgLink[i], state)
}

// startPostgresIn starts a PostgreSQL cluster of the test's own in
// namespace ns, listening on addrs (port 5432) with trust authentication
// for 10.x.0.0/16, and returns its database meshtrust's DSN for each
// address. It is stopped, and its data removed, when t ends.
func startPostgresIn(t *testing.T, l *netlab) map[string]string {
	t.Helper()
	binOut, err := exec.Command("bash", filepath.Join("..", "..", "scripts", "postgres.sh"), "bin").Output()
	bin := strings.TrimSpace(string(binOut))
	if err != nil || bin == "" {
		if os.Getenv("MESHTRUST_REQUIRE_POSTGRES") != "" {
			t.Fatalf("no PostgreSQL and MESHTRUST_REQUIRE_POSTGRES is set: scripts/postgres.sh install (%v)", err)
		}
		t.Skipf("no PostgreSQL: scripts/postgres.sh install (%v)", err)
	}
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	// PostgreSQL refuses root: its data directory is the postgres user's,
	// outside t.TempDir (0700, root's).
	data, err := os.MkdirTemp("", "meshtrust-netns-pg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	if err := os.Chown(data, uid, gid); err != nil {
		t.Fatal(err)
	}
	asPG := []string{"setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"}
	initdb := exec.Command(asPG[0], append(asPG[1:], filepath.Join(bin, "initdb"), "-D", filepath.Join(data, "data"), "-U", "meshtrust", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8")...)
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	hba, err := os.OpenFile(filepath.Join(data, "data", "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(hba, "host all all 10.%d.0.0/16 trust\n", l.net)
	hba.Close()
	log := &logtest.Buffer{}
	// ip and setpriv exec: the pid is the postmaster's.
	cmd := exec.Command("ip", append(append([]string{"netns", "exec", l.pg}, asPG...), filepath.Join(bin, "postgres"), "-D", filepath.Join(data, "data"),
		"-h", strings.Join(l.pgAddrs(), ","), "-p", "5432", "-k", "", "-c", "max_connections=300", "-c", "log_min_messages=warning")...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("PostgreSQL did not stop within 30s of SIGINT")
		}
		if t.Failed() {
			t.Logf("PostgreSQL's log:\n%s", log)
		}
	})
	admin := fmt.Sprintf("postgres://meshtrust@%s:5432/postgres?sslmode=disable", l.addr(200, 2))
	eventually.NoError(t, "PostgreSQL in its namespace answers", func() error {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("PostgreSQL exited (%v):\n%s", err, log)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, admin)
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		_, err = c.Exec(ctx, "CREATE DATABASE meshtrust")
		return err
	})
	dsns := map[string]string{}
	for _, a := range l.pgAddrs() {
		dsns[a] = fmt.Sprintf("postgres://meshtrust@%s:5432/meshtrust?sslmode=disable", a)
	}
	return dsns
}

// outcome is one heartbeat's answer.
type outcome struct {
	sent   time.Time
	code   int
	reason string
}

// TestPartition runs three meshd replicas, each in a network namespace of
// its own, on a PostgreSQL in another, and cuts replica C's link to the
// database while its agents still reach it. C keeps admitting the
// heartbeats of an agent it knows, revoked meanwhile on A, for no longer
// than the staleness bound after the revocation, then refuses them with
// 503 replica_stale; it refuses registration and issuance as soon as it
// knows the store unreachable. Once the link returns, C reads the feed and
// evicts the agent. Every write acknowledged before, during and after the
// cut is in the database.
func TestPartition(t *testing.T) {
	needNetns(t)
	bin := buildBinaries(t)
	l := newNetlab(t, 3)
	dsns := startPostgresIn(t, l)
	const bound = 3 * time.Second
	var at [3]place
	for i := range at {
		at[i] = place{dsn: dsns[l.addr(1+i, 2)], netns: l.ns[i], addr: l.addr(100+i, 2) + ":8000"}
	}
	flags := []string{"--staleness-bound", bound.String()}
	rs, m, st := startMeshAt(t, bin, at, dsns[l.addr(200, 2)], [3][]string{flags, flags, flags})
	a, b, c := rs[0], rs[1], rs[2]

	opusCert, watchCert := m.identity(t, "opus", "ct111"), m.identity(t, "watch", "ct112")
	opus, watch := m.client(opusCert), m.client(watchCert)
	opus.Timeout, watch.Timeout = 30*time.Second, 30*time.Second
	node := m.client(m.identity(t, "", "ct120"))
	node.Timeout = 30 * time.Second
	// acked are the writes acknowledged, checked in the database at the end.
	var ackedCerts, ackedAgents []string
	issue := func(r *replica, agent string) (int, []byte) {
		code, body := call(node, "POST", "https://"+r.addr+"/agent-cert",
			meshapi.AgentCertRequest{AgentID: agent, CSR: csrFor(t, agent+"@ct120")})
		if code == http.StatusCreated {
			var is meshapi.IssuedCert
			if err := json.Unmarshal(body, &is); err != nil {
				t.Fatalf("agent-cert answer: %v: %s", err, body)
			}
			ackedCerts = append(ackedCerts, is.Serial)
		}
		return code, body
	}
	register := func(cl *http.Client, r *replica, id string) (int, []byte) {
		code, body := call(cl, "POST", "https://"+r.addr+"/heartbeat", map[string]any{"agent_id": id, "http_port": 9000})
		if code == http.StatusOK {
			ackedAgents = append(ackedAgents, id)
		}
		return code, body
	}
	opusBody := map[string]any{"agent_id": "opus", "http_port": 9000}
	if code, body := register(opus, c, "opus"); code != http.StatusOK {
		t.Fatalf("opus registers on C: %d %s", code, body)
	}
	if code, body := issue(a, "before"); code != http.StatusCreated {
		t.Fatalf("issuance on A: %d %s", code, body)
	}

	// opus heartbeats to C throughout, every 50ms, on one keep-alive
	// connection (a new one when C closes it).
	var (
		mu   sync.Mutex
		outs []outcome
		stop = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			sent := time.Now()
			code, body := call(opus, "POST", "https://"+c.addr+"/heartbeat", opusBody)
			var e meshapi.ErrorResponse
			json.Unmarshal(body, &e)
			mu.Lock()
			outs = append(outs, outcome{sent: sent, code: code, reason: e.Reason})
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	})

	cutAt := time.Now()
	l.cut(t, 2, false)
	// C knows the store unreachable at its next read (abandoned within a
	// second): /health says so, and what must be written is refused.
	eventually.NoError(t, "C's /health reports the store unreachable", func() error {
		code, body := call(opus, "GET", "https://"+c.addr+"/health", nil)
		if code != http.StatusOK || !bytes.Contains(body, []byte(`"degraded"`)) || !bytes.Contains(body, []byte("store")) {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if code, body := register(watch, c, "watch"); code != http.StatusServiceUnavailable || !bytes.Contains(body, []byte("store_unreachable")) && !bytes.Contains(body, []byte("replica_stale")) {
		t.Errorf("a new agent's registration on C, cut off: %d %s, want 503", code, body)
	}
	if code, body := issue(c, "cut"); code != http.StatusServiceUnavailable {
		t.Errorf("issuance on C, cut off: %d %s, want 503", code, body)
	}
	// The others write on.
	if code, body := register(watch, a, "watch"); code != http.StatusOK {
		t.Errorf("watch registers on A during the cut: %d %s", code, body)
	}
	if code, body := issue(b, "during"); code != http.StatusCreated {
		t.Errorf("issuance on B during the cut: %d %s", code, body)
	}

	// opus is revoked on A while C cannot see it.
	revokeAt := time.Now()
	if code, body := a.admin(t, "POST", "/admin/revoke", meshapi.RevokeRequest{Target: "opus@ct111"}); code != http.StatusOK {
		t.Fatalf("revoke opus on A: %d %s", code, body)
	}
	if code, body := call(opus, "HEAD", "https://"+b.addr+"/heartbeat/opus", nil); code != http.StatusForbidden {
		t.Errorf("opus's HEAD on B after its revocation: %d %s, want 403", code, body)
	}
	eventually.NoError(t, "C refuses opus as replica_stale", func() error {
		mu.Lock()
		defer mu.Unlock()
		if n := len(outs); n == 0 || outs[n-1].code != http.StatusServiceUnavailable || outs[n-1].reason != "replica_stale" {
			return fmt.Errorf("last answers %v", outs[max(0, n-3):])
		}
		return nil
	})
	mu.Lock()
	var servedCut int
	var lastServed time.Time
	for _, o := range outs {
		switch {
		case o.code == http.StatusOK && o.sent.After(cutAt):
			servedCut++
			lastServed = o.sent
			// C's last read of the store began before the cut, so it
			// refuses from that read plus the bound at the latest: no
			// heartbeat sent later than the revocation plus the bound is
			// admitted.
			if o.sent.After(revokeAt.Add(bound)) {
				t.Errorf("C admitted opus's heartbeat sent %v after its revocation, past the bound %v", o.sent.Sub(revokeAt), bound)
			}
		case o.code == http.StatusOK, o.code == http.StatusServiceUnavailable && o.reason == "replica_stale":
		default:
			t.Errorf("opus's heartbeat to C sent %v after the cut: %d %s", o.sent.Sub(cutAt), o.code, o.reason)
		}
	}
	mu.Unlock()
	if servedCut == 0 {
		t.Errorf("C admitted none of opus's heartbeats after the cut; within the bound it serves the agents it knows")
	}
	t.Logf("C admitted %d heartbeats of opus after the cut, the last sent %v after the cut (%v after the revocation on A; bound %v)",
		servedCut, lastServed.Sub(cutAt).Round(time.Millisecond), lastServed.Sub(revokeAt).Round(time.Millisecond), bound)
	if code, body := call(watch, "GET", "https://"+c.addr+"/agents", nil); code != http.StatusServiceUnavailable || !bytes.Contains(body, []byte("--staleness-bound "+bound.String())) {
		t.Errorf("GET /agents on C past the bound: %d %s, want 503 naming the bound", code, body)
	}

	// The link returns: C reads the feed, evicts opus, and writes again.
	l.cut(t, 2, true)
	upAt := time.Now()
	var evictedAt time.Time
	eventually.NoError(t, "C refuses opus as revoked once its link returns", func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, o := range outs {
			if o.sent.After(upAt) && o.code == http.StatusForbidden {
				evictedAt = o.sent
				return nil
			}
		}
		return fmt.Errorf("last answers %v", outs[max(0, len(outs)-3):])
	})
	close(stop)
	wg.Wait()
	eventually.NoError(t, "C lists opus evicted", func() error {
		if got := agents(t, watch, c)["opus"]; got != "evicted" {
			return fmt.Errorf("listed %q", got)
		}
		return nil
	})
	t.Logf("C refused opus as revoked on a heartbeat sent %v after its link returned", evictedAt.Sub(upAt).Round(time.Millisecond))
	eventually.NoError(t, "issuance on C once its link returned", func() error {
		if code, body := issue(c, "after"); code != http.StatusCreated {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if code, body := register(watch, c, "watch"); code != http.StatusOK {
		t.Errorf("watch's heartbeat to C once its link returned: %d %s", code, body)
	}

	// Every acknowledged write is in the database.
	ctx := t.Context()
	for _, s := range ackedCerts {
		if _, err := st.Cert(ctx, s); err != nil {
			t.Errorf("certificate %s was acknowledged but is not in the database: %v", s, err)
		}
	}
	recs, err := st.Agents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]bool{}
	for _, r := range recs {
		held[r.ID] = true
	}
	for _, id := range ackedAgents {
		if !held[id] {
			t.Errorf("agent %s's registration was acknowledged but is not in the database", id)
		}
	}
	ids, err := st.RevokedIdentities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	revoked := false
	for _, r := range ids {
		revoked = revoked || r.Name == "opus@ct111"
	}
	if !revoked {
		t.Errorf("the acknowledged revocation of opus@ct111 is not in the database")
	}
	t.Logf("%d certificates and %d registrations acknowledged, all in the database", len(ackedCerts), len(ackedAgents))
}
