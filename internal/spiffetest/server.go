// Package spiffetest is a SPIFFE Workload API server for tests: it stands
// in for a SPIRE agent (and the SPIRE server behind it) so that the real
// go-spiffe client, github.com/spiffe/go-spiffe/v2/workloadapi, can be
// tested against it over the real wire protocol — gRPC on a unix socket,
// with go-spiffe's published protobuf definitions.
//
// A Server is one workload's view of the Workload API: its X.509-SVID,
// its trust domain's bundle and the federated bundles it is given. The
// Servers of one NewServer (NewWorkload adds more) share the CAs, one per
// trust domain, so two workloads can hold SVIDs that verify against each
// other, and a CA rotation reaches every workload at once. Like a SPIRE
// agent, a Server
//
//   - refuses every call without the "workload.spiffe.io: true" metadata
//     header (InvalidArgument, "security header missing from request");
//   - answers PermissionDenied ("no identity issued") while the workload
//     has no SVID;
//   - keeps FetchX509SVID and FetchX509Bundles streams open and sends a
//     new response whenever what they carry changes;
//   - answers Unimplemented for the JWT and WIT methods.
//
// Everything is in memory and driven through channels: a test method
// that changes a workload's state wakes every open stream, which sends
// the change at once if it alters what the stream carries (and nothing
// otherwise), so no test needs to sleep or poll.
package spiffetest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// maxSocketPath is the longest unix socket path every platform takes
// (sun_path is 104 bytes on macOS, 108 on Linux, with the final NUL).
const maxSocketPath = 103

// Option configures NewServer.
type Option func(*node)

// WithIntermediate makes every CA sign SVIDs through an intermediate, as
// a SPIRE server with an UpstreamAuthority does: an SVID's chain is then
// the leaf and the intermediate, and the bundle holds only the root.
func WithIntermediate() Option { return func(n *node) { n.intermediate = true } }

// Signing is one shape of a trust domain's CA for a table test: its
// name, the options that make it, and the length of the SVID's chain.
type Signing struct {
	Name  string
	Opts  []Option
	Chain int
}

// Signings returns the two shapes: the root signs SVIDs (a chain of 1),
// or an intermediate does (2).
func Signings() []Signing {
	return []Signing{
		{"root signs", nil, 1},
		{"intermediate signs", []Option{WithIntermediate()}, 2},
	}
}

// node is what the Servers of one NewServer share: the CAs, and the
// channel closed at every change so that each open stream reads its
// workload's state again.
type node struct {
	t            testing.TB
	dir          string
	intermediate bool

	mu      sync.Mutex
	cas     map[spiffeid.TrustDomain]*CA
	servers []*Server
	changed chan struct{}
}

// Server is the Workload API of one workload, on its own unix socket.
// Its methods are for the test goroutine (they fail the test on error);
// the streams it serves run on their own.
type Server struct {
	node *node
	path string

	// Guarded by node.mu.
	svid      *x509svid.SVID // nil: no identity issued
	federated []spiffeid.TrustDomain

	life sync.Mutex // serialises Stop and Restart
	grpc *grpc.Server
	done chan struct{} // closed when the running Serve returns
}

// NewServer starts the Workload API of a first workload on a unix socket
// named agent.sock in dir, and stops it when the test ends. dir "" makes
// a short directory under os.TempDir (removed at the end): t.TempDir()
// holds the test's name and is often longer than a unix socket path may
// be. The workload has no SVID until SetSVID.
func NewServer(t testing.TB, dir string, opts ...Option) *Server {
	t.Helper()
	n := &node{t: t, cas: make(map[spiffeid.TrustDomain]*CA), changed: make(chan struct{})}
	for _, o := range opts {
		o(n)
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "spiffetest")
		if err != nil {
			t.Fatalf("spiffetest: %v", err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	n.dir = dir
	return n.newServer("agent.sock")
}

// NewWorkload starts the Workload API of another workload of the same
// node, on its own socket in the same directory: it shares s's CAs, so
// the two workloads' SVIDs verify against each other's bundles, but has
// its own SVID (none at first) and its own federated bundles.
func (s *Server) NewWorkload() *Server {
	s.node.t.Helper()
	s.node.mu.Lock()
	name := fmt.Sprintf("workload%d.sock", len(s.node.servers))
	s.node.mu.Unlock()
	return s.node.newServer(name)
}

func (n *node) newServer(name string) *Server {
	n.t.Helper()
	path := filepath.Join(n.dir, name)
	if len(path) > maxSocketPath {
		n.t.Fatalf("spiffetest: socket path %s is %d bytes, longer than a unix socket path may be (%d); pass a shorter dir, or \"\"", path, len(path), maxSocketPath)
	}
	s := &Server{node: n, path: path}
	n.mu.Lock()
	n.servers = append(n.servers, s)
	n.mu.Unlock()
	s.start()
	n.t.Cleanup(s.Stop)
	return s
}

// Addr returns the Workload API's address as go-spiffe takes it
// (workloadapi.WithAddr): "unix://" and the socket's path.
func (s *Server) Addr() string { return "unix://" + s.path }

// SocketPath returns the path of the server's unix socket, as
// MCP_MESH_SPIRE_SOCKET names it.
func (s *Server) SocketPath() string { return s.path }

// CA returns the CA of td, creating it on first use.
func (s *Server) CA(td spiffeid.TrustDomain) *CA {
	s.node.t.Helper()
	s.node.mu.Lock()
	defer s.node.mu.Unlock()
	return s.node.ca(td)
}

// ca returns td's CA, creating it; n.mu is held.
func (n *node) ca(td spiffeid.TrustDomain) *CA {
	n.t.Helper()
	ca, ok := n.cas[td]
	if !ok {
		ca = newCA(n.t, td, n.intermediate)
		n.cas[td] = ca
	}
	return ca
}

// broadcast wakes every open stream of every workload; n.mu is held.
func (n *node) broadcast() {
	close(n.changed)
	n.changed = make(chan struct{})
}

// SetSVID issues the workload an X.509-SVID for id from the CA of id's
// trust domain (see CA.IssueSVID for its shape), replacing any it had,
// and sends it to the open streams. It returns the SVID.
func (s *Server) SetSVID(id spiffeid.ID) *x509svid.SVID {
	s.node.t.Helper()
	n := s.node
	n.mu.Lock()
	defer n.mu.Unlock()
	s.svid = n.ca(id.TrustDomain()).IssueSVID(id)
	n.broadcast()
	return s.svid
}

// SVID returns the workload's current X.509-SVID, nil if it has none.
func (s *Server) SVID() *x509svid.SVID {
	s.node.mu.Lock()
	defer s.node.mu.Unlock()
	return s.svid
}

// RotateSVID issues the workload a new X.509-SVID for the same ID (a new
// key and serial), as a SPIRE agent does at half of an SVID's life, and
// sends it to the open streams. It returns the new SVID.
func (s *Server) RotateSVID() *x509svid.SVID {
	s.node.t.Helper()
	svid := s.SVID()
	if svid == nil {
		s.node.t.Fatal("spiffetest: RotateSVID before SetSVID")
	}
	return s.SetSVID(svid.ID)
}

// RotateCA rotates td's CA as a SPIRE server does: a new root authority
// joins the bundle (the old ones stay, so SVIDs they signed still
// verify, until PruneBundle) and signs from now on. Every workload whose
// SVID is in td gets a new one from it, and every open stream gets the
// new bundle and SVIDs in one response.
func (s *Server) RotateCA(td spiffeid.TrustDomain) {
	s.node.t.Helper()
	n := s.node
	n.mu.Lock()
	defer n.mu.Unlock()
	ca := n.ca(td)
	ca.rotate()
	for _, w := range n.servers {
		if w.svid != nil && w.svid.ID.TrustDomain() == td {
			w.svid = ca.IssueSVID(w.svid.ID)
		}
	}
	n.broadcast()
}

// PruneBundle drops every authority of td's bundle but the newest, as
// SPIRE does once the old ones expire, and sends the bundle to the open
// streams. SVIDs an old authority signed stop verifying.
func (s *Server) PruneBundle(td spiffeid.TrustDomain) {
	s.node.t.Helper()
	n := s.node
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ca(td).prune()
	n.broadcast()
}

// AddFederatedBundle sends this workload td's bundle from now on, as a
// SPIRE agent does for a registration entry that federates with td, and
// returns td's CA (created if needed).
func (s *Server) AddFederatedBundle(td spiffeid.TrustDomain) *CA {
	s.node.t.Helper()
	n := s.node
	n.mu.Lock()
	defer n.mu.Unlock()
	ca := n.ca(td)
	if !slices.Contains(s.federated, td) {
		s.federated = append(s.federated, td)
	}
	n.broadcast()
	return ca
}

// RemoveFederatedBundle stops sending this workload td's bundle.
func (s *Server) RemoveFederatedBundle(td spiffeid.TrustDomain) {
	n := s.node
	n.mu.Lock()
	defer n.mu.Unlock()
	s.federated = slices.DeleteFunc(s.federated, func(f spiffeid.TrustDomain) bool { return f == td })
	n.broadcast()
}

// Stop makes the Workload API disappear, as when the SPIRE agent stops:
// the socket is closed and removed, and every open stream ends with an
// error (Unavailable on the client's side). The workload's state is kept
// for Restart. Stop on a stopped server does nothing.
func (s *Server) Stop() {
	s.life.Lock()
	defer s.life.Unlock()
	if s.grpc == nil {
		return
	}
	// With WaitForHandlers, Stop returns once every stream's handler
	// has: nothing of this server runs after it.
	s.grpc.Stop()
	<-s.done
	s.grpc, s.done = nil, nil
}

// Restart stops the server if it runs, then serves again on the same
// socket path with the state it had (and any change made while it was
// stopped), as a restarted SPIRE agent does.
func (s *Server) Restart() {
	s.node.t.Helper()
	s.Stop()
	s.start()
}

func (s *Server) start() {
	s.node.t.Helper()
	s.life.Lock()
	defer s.life.Unlock()
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		s.node.t.Fatalf("spiffetest: listen on %s: %v", s.path, err)
	}
	g := grpc.NewServer(
		grpc.WaitForHandlers(true),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := checkHeader(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := checkHeader(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	)
	workload.RegisterSpiffeWorkloadAPIServer(g, api{s: s})
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.Serve(ln) // returns at Stop
	}()
	s.grpc, s.done = g, done
}

// checkHeader refuses a call without the header every Workload API
// client sends, as SPIRE does: it keeps a browser or another HTTP client
// that was tricked into calling the socket from getting an answer.
func checkHeader(ctx context.Context) error {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok || len(md["workload.spiffe.io"]) != 1 || md["workload.spiffe.io"][0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

var errNoIdentity = status.Error(codes.PermissionDenied, "no identity issued")

// x509SVIDResponse returns what FetchX509SVID sends now, and the channel
// closed at the next change.
func (s *Server) x509SVIDResponse() (*workload.X509SVIDResponse, <-chan struct{}, error) {
	n := s.node
	n.mu.Lock()
	defer n.mu.Unlock()
	if s.svid == nil {
		return nil, nil, errNoIdentity
	}
	chain, key, err := s.svid.MarshalRaw()
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "marshal SVID: %v", err)
	}
	own := s.svid.ID.TrustDomain()
	resp := &workload.X509SVIDResponse{
		Svids: []*workload.X509SVID{{
			SpiffeId:    s.svid.ID.String(),
			X509Svid:    chain,
			X509SvidKey: key,
			Bundle:      n.ca(own).bundleDER(),
		}},
		FederatedBundles: s.federatedBundles(own),
	}
	return resp, n.changed, nil
}

// x509BundlesResponse returns what FetchX509Bundles sends now: the
// workload's trust domain's bundle and its federated bundles.
func (s *Server) x509BundlesResponse() (*workload.X509BundlesResponse, <-chan struct{}, error) {
	n := s.node
	n.mu.Lock()
	defer n.mu.Unlock()
	if s.svid == nil {
		return nil, nil, errNoIdentity
	}
	own := s.svid.ID.TrustDomain()
	bundles := s.federatedBundles(own)
	bundles[own.IDString()] = n.ca(own).bundleDER()
	return &workload.X509BundlesResponse{Bundles: bundles}, n.changed, nil
}

// federatedBundles maps each federated trust domain but own to its
// bundle; n.mu is held.
func (s *Server) federatedBundles(own spiffeid.TrustDomain) map[string][]byte {
	m := make(map[string][]byte, len(s.federated))
	for _, td := range s.federated {
		if td != own {
			m[td.IDString()] = s.node.ca(td).bundleDER()
		}
	}
	return m
}

// api serves the Workload API of s; it is apart from Server so that the
// gRPC methods are not part of Server's API. The embedded type answers
// Unimplemented for the JWT and WIT methods.
type api struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	s *Server
}

func (a api) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	return follow(stream.Context(), a.s.x509SVIDResponse, stream.Send)
}

func (a api) FetchX509Bundles(_ *workload.X509BundlesRequest, stream workload.SpiffeWorkloadAPI_FetchX509BundlesServer) error {
	return follow(stream.Context(), a.s.x509BundlesResponse, stream.Send)
}

// follow sends what current returns, then again after every change that
// alters it, until the stream ends.
func follow[R proto.Message](ctx context.Context, current func() (R, <-chan struct{}, error), send func(R) error) error {
	var last R
	sent := false
	for {
		resp, changed, err := current()
		if err != nil {
			return err
		}
		if !sent || !proto.Equal(resp, last) {
			if err := send(resp); err != nil {
				return err
			}
			last, sent = resp, true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}
