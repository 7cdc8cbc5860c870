// Package spire is the SPIRE credential provider: a credentials.Source
// over the SPIFFE Workload API of a SPIRE agent (MCP Mesh's
// MCP_MESH_TLS_PROVIDER=spire), through go-spiffe's workloadapi client.
//
// The source follows the Workload API's stream: every X.509-SVID the
// agent rotates (at half of its life, 30 minutes for SPIRE's default one
// hour) and every change of a bundle becomes new credentials, which
// credentials.ServerConfig and ClientConfig use from the next handshake.
// MCP Mesh fetches an SVID once at startup and keeps it, so its agents'
// certificates expire after an hour; this source's never do while the
// agent runs.
//
// # Several SVIDs
//
// The Workload API sends one X.509-SVID per registration entry that
// matches the workload, ordered by entry ID: the first is no more the
// workload's than the others, and a new entry can sort before it. The
// source chooses, in this order:
//
//  1. WithSPIFFEID's ID, and no other: while the agent sends none for
//     it, New waits and later updates are ignored;
//  2. the one SPIFFE ID sent;
//  3. the ID whose path is WithPreferredPath's (provider.FromEnv passes
//     /agent/<agent id>, the ID meshd's default spire binding expects);
//  4. the SVID whose SPIRE hint is WithPreferredHint's (the provider
//     passes the agent id);
//  5. the ID served until now, if the agent still sends it, so that a
//     new entry that sorts first does not switch the workload's identity;
//  6. the first.
//
// When 5 or 6 decides among several IDs the choice is ambiguous, and the
// source logs a warning naming every ID and how to choose, once per
// change of the set. Each SVID it serves is logged with the rule that
// chose it.
//
// # Trust
//
// Credentials.Bundles hold the bundle of the SVID's own trust domain and
// those of the federated trust domains the caller lists (WithFederation);
// a bundle the agent sends for any other trust domain is dropped, and
// logged once. SPIFFE-aware verification (ServerConfig, ClientConfig)
// checks a peer whose certificate has a SPIFFE ID against the bundle of
// that ID's trust domain only: a bundle vouches for its own trust domain's
// IDs and no others. MCP Mesh falls back to trying every bundle, so a
// federated partner's CA can vouch for an ID in the mesh's own trust
// domain; that is the bug this provider does not copy.
//
// provider.FromEnv adds MCP_MESH_TLS_CA's CAs to these anchors
// (Credentials.OperatorRoots) under the same rule: they vouch for a peer
// without a SPIFFE ID, or of a trust domain without a bundle, never for an
// ID of the own or a federated trust domain.
//
// Credentials.Roots hold the authorities of the own trust domain only,
// not those of every bundle: a consumer that knows nothing of SPIFFE (a
// plain tls.Config, a process reading the files Materialize writes)
// checks no SPIFFE ID against its trust domain, so giving it a federated
// CA would let that CA vouch for anything.
//
// # When the agent goes away
//
// While the agent's socket is gone (an agent restart or upgrade), the
// last credentials stay in use, and the source keeps reconnecting with
// go-spiffe's back-off: linear, 1 s more per failed attempt up to 30 s,
// under gRPC's own redial back-off (exponential, 1 s growing to 2 min).
// The outage is logged once, its end once. An SVID outlives a short
// outage (SPIRE rotates it with half of its life left); after a long one,
// peers refuse the expired SVID until the agent is back. StaleSince says
// since when the credentials have not been known current, so that a
// consumer of the bundles (the spire trust backend) can bound how long it
// trusts them.
package spire

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshtrust/meshtrust/credentials"
)

const (
	// EnvSocket names the environment variable that holds the path of
	// the SPIRE agent's Workload API socket, as in MCP Mesh.
	EnvSocket = "MCP_MESH_SPIRE_SOCKET"
	// DefaultSocket is where a SPIRE agent's Workload API listens unless
	// configured otherwise (and where MCP Mesh's Helm chart mounts it).
	DefaultSocket = "/run/spire/agent/sockets/agent.sock"
)

// ErrNoSVID is what New's error wraps when no X.509-SVID came from the
// Workload API before its context ended.
var ErrNoSVID = errors.New("spire: no X.509-SVID from the Workload API")

// Option configures New.
type Option func(*config)

type config struct {
	socket     string
	federation []spiffeid.TrustDomain
	log        *slog.Logger
	client     []workloadapi.ClientOption
	choice     choice
}

// WithSocket sets the Workload API's address: a socket path
// ("/run/spire/agent/sockets/agent.sock") or a go-spiffe address
// ("unix:///...", "tcp://127.0.0.1:8081"). Without it New uses
// MCP_MESH_SPIRE_SOCKET, else SPIFFE_ENDPOINT_SOCKET (the SPIFFE
// standard's variable), else DefaultSocket.
func WithSocket(addr string) Option { return func(c *config) { c.socket = addr } }

// WithFederation makes the bundles of tds part of the credentials when the
// agent sends them, so that peers with SVIDs of those trust domains are
// trusted (each bundle for its own trust domain's IDs only). Bundles of
// trust domains not listed are dropped. Repeated options add up.
func WithFederation(tds ...spiffeid.TrustDomain) Option {
	return func(c *config) {
		for _, td := range tds {
			if !td.IsZero() && !slices.Contains(c.federation, td) {
				c.federation = append(c.federation, td)
			}
		}
	}
}

// WithSPIFFEID makes the source serve the X.509-SVID of id and no other,
// however many SVIDs the Workload API sends. While it sends none for id,
// New waits (and fails when its context ends, with ErrNoSVID naming the
// IDs it did send), and later updates without it are ignored: the last
// SVID of id stays in use. The zero ID leaves the choice to the
// preferences below.
func WithSPIFFEID(id spiffeid.ID) Option { return func(c *config) { c.choice.id = id } }

// WithPreferredPath makes the source prefer, among several SVIDs, the one
// whose SPIFFE ID's path is exactly path ("/agent/opus"): what
// provider.FromEnv passes for the agent's own ID. When no SVID has that
// path, the next preference decides.
func WithPreferredPath(path string) Option { return func(c *config) { c.choice.path = path } }

// WithPreferredHint makes the source prefer, among several SVIDs, the one
// whose SPIRE hint (`spire-server entry create -hint`) is exactly hint.
// WithPreferredPath comes first when both match.
func WithPreferredHint(hint string) Option { return func(c *config) { c.choice.hint = hint } }

// WithLogger receives the source's events: new SVIDs and bundles (IDs,
// serials, expiry; never a key), dropped bundles, outages of the agent.
// The default discards them.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// WithClientOptions passes options to go-spiffe's Workload API client,
// such as workloadapi.WithBackoffStrategy or WithDialOptions. The address
// is WithSocket's: a workloadapi.WithAddr here overrides it.
func WithClientOptions(opts ...workloadapi.ClientOption) Option {
	return func(c *config) { c.client = append(c.client, opts...) }
}

// Source is a credentials.Source over a SPIRE agent's Workload API. Its
// Certificate is the X.509-SVID it chooses among those the agent sends
// (see "Several SVIDs" in the package doc), its Roots the authorities of the SVID's trust domain, and its Bundles
// that trust domain's and the federated ones' (see the package doc).
// Current returns the credentials of the last X.509-SVID and bundles the
// agent sent; Changed is closed when the agent sends a new SVID or bundle,
// or when the source is closed.
type Source struct {
	credentials.View // the holder's: Current and Changed

	addr   string
	cfg    config
	log    *slog.Logger
	holder credentials.Holder
	client *workloadapi.Client
	stop   context.CancelFunc
	done   chan struct{} // closed when the watch has returned
	once   sync.Once     // Close

	mu       sync.Mutex
	lastErr  error // the last error of the watch, for New's message
	watchErr error // why the watch ended, if it did before Close
	// staleSince is zero while the credentials are known current (see
	// StaleSince); staleChanged is closed, and replaced, when it changes.
	staleSince   time.Time
	staleChanged chan struct{}

	// Only the watch goroutine uses these.
	down    bool // the Workload API failed since the last update
	dropped map[spiffeid.TrustDomain]bool
	serving spiffeid.ID // the SPIFFE ID of the SVID served, once there is one
	warned  string      // the set of SPIFFE IDs the last ambiguity warning named
}

var _ credentials.Source = (*Source)(nil)

// New connects to the Workload API and returns once the first X.509-SVID
// has come, or fails when ctx ends first, with an error that wraps
// ErrNoSVID, names the socket and says what the agent last answered. ctx
// bounds only that wait: the source follows the Workload API until
// Close.
func New(ctx context.Context, opts ...Option) (*Source, error) {
	cfg := config{log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(&cfg)
	}
	addr, err := address(cfg.socket)
	if err != nil {
		return nil, err
	}
	client, err := workloadapi.New(ctx, append([]workloadapi.ClientOption{workloadapi.WithAddr(addr)}, cfg.client...)...)
	if err != nil {
		return nil, fmt.Errorf("spire: Workload API client for %s: %w", addr, err)
	}
	s := &Source{
		addr:    addr,
		cfg:     cfg,
		log:     cfg.log.With("provider", "spire", "socket", addr),
		client:  client,
		done:    make(chan struct{}),
		dropped: make(map[spiffeid.TrustDomain]bool),

		staleChanged: make(chan struct{}),
	}
	s.View = s.holder.View()
	watchCtx, stop := context.WithCancel(context.Background())
	s.stop = stop
	go s.watch(watchCtx)
	if err := s.waitFirst(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// address returns the Workload API address New dials: the option's, else
// the environment's, else the default, as go-spiffe takes it.
func address(opt string) (string, error) {
	addr, from := opt, "WithSocket"
	for _, env := range []string{EnvSocket, workloadapi.SocketEnv} {
		if addr == "" {
			addr, from = os.Getenv(env), env
		}
	}
	if addr == "" {
		addr, from = DefaultSocket, "the default"
	}
	if strings.HasPrefix(addr, "/") {
		addr = (&url.URL{Scheme: "unix", Path: addr}).String()
	}
	if err := workloadapi.ValidateAddress(addr); err != nil {
		return "", fmt.Errorf("spire: Workload API address %q (from %s): %w; give the socket's absolute path or a unix:// address", addr, from, err)
	}
	return addr, nil
}

// waitFirst waits for the first credentials.
func (s *Source) waitFirst(ctx context.Context) error {
	for {
		changed := s.holder.Changed()
		if _, err := s.holder.Current(); err == nil {
			return nil
		}
		select {
		case <-changed:
		case <-s.done:
			s.mu.Lock()
			err := s.watchErr
			s.mu.Unlock()
			return fmt.Errorf("%w at %s: the Workload API refused the watch: %w", ErrNoSVID, s.addr, err)
		case <-ctx.Done():
			s.mu.Lock()
			last := s.lastErr
			s.mu.Unlock()
			if last == nil {
				return fmt.Errorf("%w at %s: %w (no answer yet); is the SPIRE agent running, and does %s name its socket?", ErrNoSVID, s.addr, ctx.Err(), EnvSocket)
			}
			return fmt.Errorf("%w at %s: %w (last answer: %w)%s", ErrNoSVID, s.addr, ctx.Err(), last, hint(last))
		}
	}
}

// hint says what to do about the Workload API's last error.
func hint(err error) string {
	switch status.Code(err) {
	case codes.PermissionDenied:
		return "; the agent has no identity for this workload: create a registration entry whose selectors match it"
	case codes.Unavailable:
		return fmt.Sprintf("; is the SPIRE agent running, and does %s name its socket?", EnvSocket)
	}
	return ""
}

// Close stops following the Workload API and closes the connection. It
// is idempotent. From then on StaleSince reports the credentials stale
// since Close.
func (s *Source) Close() error {
	s.once.Do(func() {
		s.stop()
		<-s.done
		s.client.Close()
		s.holder.Close()
		s.setStale(true)
	})
	return nil
}

// StaleSince says whether the credentials are known to be current. since
// is the zero time while the Workload API stream is healthy: the agent's
// last update is what Current holds, and no error came after it. Else it
// is when the stream broke (the first watch error, or an update that
// could not be used, after the last good update: the agent unreachable,
// PermissionDenied once the workload's entry is gone) or when the source
// was closed: from then on SPIRE may have rotated, tainted or revoked
// authorities that the credentials still hold. A healthy stream is quiet
// while nothing changes, so the time of the last update says nothing.
// changed is closed when the answer changes.
func (s *Source) StaleSince() (since time.Time, changed <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.staleSince, s.staleChanged
}

// setStale marks the credentials stale from now on, unless they are
// already, or current again.
func (s *Source) setStale(stale bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if stale == !s.staleSince.IsZero() {
		return
	}
	s.staleSince = time.Time{}
	if stale {
		s.staleSince = time.Now()
	}
	close(s.staleChanged)
	s.staleChanged = make(chan struct{})
}

// watch follows the Workload API until ctx ends; go-spiffe reconnects
// and backs off. The watch ends by itself only for an error go-spiffe
// does not retry (InvalidArgument: the agent refuses the request).
func (s *Source) watch(ctx context.Context) {
	defer close(s.done)
	err := s.client.WatchX509Context(ctx, watcher{s})
	if ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	s.watchErr = err
	s.mu.Unlock()
	s.log.Error("stopped following the Workload API, which refused the watch; the last credentials stay in use until the process restarts", "err", err)
}

// watcher receives the watch's updates and errors, one at a time, on the
// watch's goroutine. It is apart from Source so that these methods are
// not part of Source's API.
type watcher struct{ s *Source }

func (w watcher) OnX509ContextUpdate(x *workloadapi.X509Context) { w.s.update(x) }
func (w watcher) OnX509ContextWatchError(err error)              { w.s.watchError(err) }

// update turns what the agent sent into credentials, unless they are
// what the source holds already.
func (s *Source) update(x *workloadapi.X509Context) {
	next, err := s.credentials(x)
	if err != nil {
		s.setStale(true)
		s.setLastErr(err)
		s.log.Warn("ignoring an update from the Workload API; the last credentials stay in use", "err", err)
		return
	}
	if s.down {
		s.down = false
		s.log.Info("the Workload API is reachable again")
	}
	if cur, err := s.holder.Current(); err == nil && same(cur, next) {
		s.setStale(false)
		return
	}
	if err := s.holder.Set(next); err != nil {
		if !errors.Is(err, credentials.ErrClosed) {
			s.setStale(true)
			s.log.Warn("cannot use the SVID the Workload API sent; the last credentials stay in use", "err", err)
		}
		return
	}
	// After Set: whoever sees the credentials current again reads the
	// agent's update from Current.
	s.setStale(false)
	leaf := next.Certificate.Leaf
	tds := make([]string, 0, len(next.Bundles))
	for td := range next.Bundles {
		tds = append(tds, td.Name())
	}
	slices.Sort(tds)
	s.log.Info("new credentials from the Workload API", "spiffe_id", leaf.URIs[0].String(), "serial", fmt.Sprintf("%x", leaf.SerialNumber), "not_after", leaf.NotAfter, "trust_domains", tds)
}

// credentials builds credentials of the SVID of x the source chooses (see
// choice) and of the bundles it may trust.
func (s *Source) credentials(x *workloadapi.X509Context) (*credentials.Credentials, error) {
	svid, by, err := s.choose(x.SVIDs)
	if err != nil {
		return nil, err
	}
	own := svid.ID.TrustDomain()
	ownBundle, ok := x.Bundles.Get(own)
	if !ok || len(ownBundle.X509Authorities()) == 0 {
		return nil, fmt.Errorf("spire: the Workload API sent SVID %s without a bundle for its trust domain %s", svid.ID, own)
	}
	cert, err := credentials.NewTLSCertificate(svid.Certificates, svid.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("spire: SVID %s: %w", svid.ID, err)
	}
	bundles := map[spiffeid.TrustDomain][]*x509.Certificate{own: ownBundle.X509Authorities()}
	for _, b := range x.Bundles.Bundles() {
		td := b.TrustDomain()
		switch {
		case td == own:
		case slices.Contains(s.cfg.federation, td):
			bundles[td] = b.X509Authorities()
		case !s.dropped[td]:
			s.dropped[td] = true
			s.log.Warn("dropping the bundle of a trust domain this source does not federate with; its SVIDs are not trusted", "trust_domain", td.Name(), "fix", "list it in spire.WithFederation to trust it")
		}
	}
	// Compared: canonical strings, as in choice.
	if svid.ID.String() != s.serving.String() {
		s.log.Info("serving the X.509-SVID of this SPIFFE ID", "spiffe_id", svid.ID.String(), "chosen_by", by, "spiffe_ids", ids(x.SVIDs))
		s.serving = svid.ID
	}
	return &credentials.Credentials{Certificate: cert, Roots: ownBundle.X509Authorities(), Bundles: bundles}, nil
}

// choose picks the SVID to serve among svids, and says once per set of
// SPIFFE IDs when no rule could tell them apart.
func (s *Source) choose(svids []*x509svid.SVID) (svid *x509svid.SVID, by string, err error) {
	svid, by, ambiguous, err := s.cfg.choice.pick(svids, s.serving)
	if err != nil {
		return nil, "", err
	}
	all := ids(svids)
	if key := strings.Join(all, " "); !ambiguous {
		s.warned = ""
	} else if key != s.warned {
		s.warned = key
		s.log.Warn("the Workload API sent SVIDs of several SPIFFE IDs for this workload and no rule chose one; serving one of them",
			"spiffe_ids", all, "serving", svid.ID.String(), "chosen_by", by,
			"fix", "choose with MCP_MESH_SPIFFE_ID (spire.WithSPIFFEID), or register the agent's own ID as spiffe://<trust domain>/agent/<agent id> or with the entry hint <agent id>")
	}
	return svid, by, nil
}

// watchError notes an error of the watch: an outage of the agent (gRPC
// errors, which go-spiffe retries) or an update that did not parse.
func (s *Source) watchError(err error) {
	if status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) {
		return // Close
	}
	s.setStale(true)
	s.setLastErr(err)
	if _, isRPC := status.FromError(err); !isRPC {
		s.log.Warn("ignoring an update from the Workload API that does not parse; the last credentials stay in use", "err", err)
		return
	}
	if s.down {
		s.log.Debug("the Workload API is still unreachable", "err", err)
		return
	}
	s.down = true
	cur, cerr := s.holder.Current()
	if cerr != nil {
		s.log.Warn("waiting for the first SVID from the Workload API; retrying with back-off", "err", err)
		return
	}
	leaf := cur.Certificate.Leaf
	s.log.Warn("the Workload API is unreachable; the last SVID stays in use, retrying with back-off", "err", err, "spiffe_id", leaf.URIs[0].String(), "not_after", leaf.NotAfter)
}

func (s *Source) setLastErr(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

// same reports whether a and b hold the same chain, roots and bundles.
func same(a, b *credentials.Credentials) bool {
	if !slices.EqualFunc(a.Certificate.Certificate, b.Certificate.Certificate, func(x, y []byte) bool { return string(x) == string(y) }) ||
		!sameCerts(a.Roots, b.Roots) || len(a.Bundles) != len(b.Bundles) {
		return false
	}
	for td, certs := range a.Bundles {
		if other, ok := b.Bundles[td]; !ok || !sameCerts(certs, other) {
			return false
		}
	}
	return true
}

func sameCerts(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}
