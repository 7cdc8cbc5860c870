// Package spiretest runs a real SPIRE server and agent (SPIRE 1.13.3, built
// and started by scripts/spire.sh) for the tests of the SPIFFE paths: the
// judge the Workload API double (internal/spiffetest) stands in for only
// where the real server cannot be made to produce a fault.
package spiretest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// SPIRE is a server and an agent on 127.0.0.1, the agent attested by a
// join token, both stopped when the test ends.
type SPIRE struct {
	// Dir holds their configuration, data, logs and sockets.
	Dir string
	// TrustDomain is the server's trust domain.
	TrustDomain string
	// AgentSocket is the agent's Workload API address (unix://...).
	AgentSocket string
	// AgentID is the agent's SPIFFE ID, the parent of entries for its
	// workloads.
	AgentID string

	// BundleEndpointURL is the server's SPIFFE bundle endpoint
	// (https_spiffe profile), set when it was started WithBundleEndpoint.
	BundleEndpointURL string

	serverSocket string
	bin          string // the directory of spire-server and spire-agent
	env          []string
}

// Option configures Start.
type Option func(*options)

type options struct{ bundleEndpoint bool }

// WithBundleEndpoint makes the server serve its bundle as a SPIFFE bundle
// endpoint (https_spiffe profile, refresh hint 1 minute), for another
// server to federate with (Federate).
func WithBundleEndpoint() Option { return func(o *options) { o.bundleEndpoint = true } }

// script is scripts/spire.sh, found from this file's directory.
func script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts", "spire.sh")
}

// Start starts SPIRE for trust domain td in a fresh t.TempDir(). It skips
// the test when SPIRE has not been built (scripts/spire.sh build) unless
// MESHTRUST_REQUIRE_SPIRE is set: then a missing SPIRE fails the test.
func Start(t testing.TB, td string, opts ...Option) *SPIRE {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	bin, err := exec.Command("bash", script(), "path").Output()
	if err != nil {
		if os.Getenv("MESHTRUST_REQUIRE_SPIRE") != "" {
			t.Fatalf("no SPIRE built and MESHTRUST_REQUIRE_SPIRE is set: build it with scripts/spire.sh build")
		}
		t.Skip("no SPIRE built: scripts/spire.sh build (about 20 minutes, once) runs these tests against a real SPIRE server and agent")
	}
	// Should the test binary die (a timeout), SPIRE goes with it.
	s := &SPIRE{Dir: t.TempDir(), bin: strings.TrimSpace(string(bin)), env: []string{fmt.Sprintf("SPIRE_SH_PARENT=%d", os.Getpid())}}
	t.Cleanup(func() { s.run(t, nil, "bash", script(), "stop", s.Dir) })
	env := s.env
	if o.bundleEndpoint {
		env = append(env, "SPIRE_SH_BUNDLE_ENDPOINT=1")
	}
	vars := vars(s.run(t, env, "bash", script(), "start", s.Dir, td))
	s.TrustDomain, s.AgentSocket, s.AgentID, s.serverSocket = vars["SPIRE_TRUST_DOMAIN"], vars["SPIRE_AGENT_SOCKET"], vars["SPIRE_AGENT_ID"], vars["SPIRE_SERVER_SOCKET"]
	s.BundleEndpointURL = vars["SPIRE_BUNDLE_ENDPOINT_URL"]
	if s.AgentSocket == "" || s.serverSocket == "" || s.AgentID == "" || o.bundleEndpoint && s.BundleEndpointURL == "" {
		t.Fatalf("scripts/spire.sh start printed no sockets, agent ID or bundle endpoint:\n%v", vars)
	}
	return s
}

// vars parses the NAME=value lines scripts/spire.sh prints.
func vars(out string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m
}

// RestartAgent stops the SPIRE agent and starts it again on the same
// socket, with the SVID it kept in its data dir (its join token is spent).
func (s *SPIRE) RestartAgent(t testing.TB) {
	t.Helper()
	s.run(t, s.env, "bash", script(), "restart-agent", s.Dir)
}

// Federate makes the server trust partner's bundle and refresh it from
// partner's bundle endpoint (partner must have been started
// WithBundleEndpoint). Federation is one way: call partner.Federate(s)
// for the other.
func (s *SPIRE) Federate(t testing.TB, partner *SPIRE) {
	t.Helper()
	s.run(t, nil, "bash", script(), "federate", s.Dir, partner.Dir)
}

// Server runs spire-server's CLI against the server and returns its
// standard output.
func (s *SPIRE) Server(t testing.TB, args ...string) string {
	t.Helper()
	return s.run(t, nil, filepath.Join(s.bin, "spire-server"), append(args, "-socketPath", s.serverSocket)...)
}

var entryID = regexp.MustCompile(`(?m)^Entry ID\s*:\s*(\S+)`)

// CreateEntry registers spiffeID for the workloads of the agent that
// match selectors (such as "unix:uid:0") and returns the entry's ID.
func (s *SPIRE) CreateEntry(t testing.TB, spiffeID string, selectors ...string) string {
	t.Helper()
	return s.CreateEntryArgs(t, spiffeID, selectors)
}

// CreateEntryArgs is CreateEntry with more arguments of spire-server entry
// create, such as "-dns", "localhost" or "-federatesWith", "spiffe://td".
func (s *SPIRE) CreateEntryArgs(t testing.TB, spiffeID string, selectors []string, more ...string) string {
	t.Helper()
	args := []string{"entry", "create", "-parentID", s.AgentID, "-spiffeID", spiffeID}
	for _, sel := range selectors {
		args = append(args, "-selector", sel)
	}
	args = append(args, more...)
	out := s.Server(t, args...)
	m := entryID.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("spire-server entry create printed no entry ID:\n%s", out)
	}
	return m[1]
}

// LocalAuthority runs `spire-server localauthority x509 VERB` (show,
// prepare, activate, taint, revoke), on authority id when given, and
// returns the authority IDs of its answer by key: active, prepared and old
// for show, prepared_authority, activated_authority, ... for the others.
// An authority's ID is the hex of its subject key identifier, which the
// SVIDs it signs name as their authority key identifier.
func (s *SPIRE) LocalAuthority(t testing.TB, verb, id string) map[string]string {
	t.Helper()
	args := []string{"localauthority", "x509", verb, "-output", "json"}
	if id != "" {
		args = append(args, "-authorityID", id)
	}
	var out map[string]struct {
		AuthorityID string `json:"authority_id"`
	}
	if err := json.Unmarshal([]byte(s.Server(t, args...)), &out); err != nil {
		t.Fatalf("spire-server localauthority x509 %s: %v", verb, err)
	}
	ids := map[string]string{}
	for k, v := range out {
		ids[k] = v.AuthorityID
	}
	return ids
}

func (s *SPIRE) run(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}
