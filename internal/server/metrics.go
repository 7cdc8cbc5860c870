package server

import (
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshtrust/meshtrust/trust"
)

// metrics are meshd's Prometheus metrics, on a registry of their own.
type metrics struct {
	reg           *prometheus.Registry
	heartbeats    *prometheus.CounterVec
	registrations prometheus.Counter
	refusals      *prometheus.CounterVec
	evictions     *prometheus.CounterVec
	closedConns   prometheus.Counter
	watchers      prometheus.Gauge
	legacyUses    prometheus.Counter
	// unauthenticated counts agent-route requests admitted without a
	// certificate (TLS mode auto), by route.
	unauthenticated *prometheus.CounterVec
	// unauthRefusals counts the requests of callers without a certificate
	// refused by the certless bounds, by reason.
	unauthRefusals *prometheus.CounterVec
	// enrollRefusals counts the refused POST /enroll requests, by reason;
	// rateLimited the requests a rate limiter refused, by limiter.
	enrollRefusals *prometheus.CounterVec
	rateLimited    *prometheus.CounterVec
	// liveHeartbeats are meshd_heartbeats_total's children for the
	// answers a live agent's heartbeats get (hotHeartbeat), each resolved
	// on its first use, so the series appears once counted, as with
	// WithLabelValues, but the labels are not hashed again per request.
	liveHeartbeats [len(hotHeartbeats)]atomic.Pointer[counterRef]
}

// counterRef holds a resolved child of a CounterVec.
type counterRef struct{ prometheus.Counter }

// hotHeartbeats are the (method, code) of meshd_heartbeats_total counted
// on every heartbeat of a live agent.
var hotHeartbeats = [...]struct {
	method, code string
}{{"post", "200"}, {"head", "200"}, {"head", "202"}}

// heartbeat returns meshd_heartbeats_total's child for method and code.
func (m *metrics) heartbeat(method string, code int) prometheus.Counter {
	var i int
	switch {
	case code == http.StatusOK && method == "post":
		i = 0
	case code == http.StatusOK && method == "head":
		i = 1
	case code == http.StatusAccepted && method == "head":
		i = 2
	default:
		return m.heartbeats.WithLabelValues(method, strconv.Itoa(code))
	}
	if c := m.liveHeartbeats[i].Load(); c != nil {
		return c.Counter
	}
	// Two first uses at once resolve the same child: WithLabelValues
	// returns one child per label values.
	c := &counterRef{m.heartbeats.WithLabelValues(hotHeartbeats[i].method, hotHeartbeats[i].code)}
	m.liveHeartbeats[i].Store(c)
	return c.Counter
}

// goMemoryMetrics are the Go runtime's memory classes (where meshd's
// memory goes: heap objects, goroutine stacks, free heap kept or returned
// to the OS, runtime metadata; go_memory_classes_*_bytes) and the
// collector's settings and goal (go_gc_gogc_percent,
// go_gc_gomemlimit_bytes, go_gc_heap_goal_bytes,
// go_gc_stack_starting_size_bytes), served besides go_memstats_*: an
// operator sizing meshd for its agents reads what a live connection
// holds from them, and what the GC target adds on top.
var goMemoryMetrics = collectors.GoRuntimeMetricsRule{
	Matcher: regexp.MustCompile(`^/memory/classes/.*|^/gc/(gogc|gomemlimit|heap/goal|stack/starting-size):`),
}

// Limiters, the label values of meshd_rate_limited_total.
const (
	limitEnrollSource = "enroll_source"
	limitEnrollGlobal = "enroll_global"
	limitAgentCert    = "agent_cert"
	limitWatchStreams = "watch_streams"
)

// crlAge is nil without a local CA.
// feedPending exports how many change events some handler failed to
// apply and retries: above zero, this process's trust state (revocations,
// entity CAs, the admin policy) lags the store's.
func (m *metrics) feedPending(pending func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meshd_change_feed_pending_events", Help: "Change events not applied yet in this process, retried with backoff until they apply.",
	}, func() float64 { return float64(pending()) }))
}

func newMetrics(chain *trust.Chain, agents Registry, serverCert func() time.Time, crlAge func() time.Duration) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_heartbeats_total", Help: "Heartbeats answered, by method (post, head) and HTTP status.",
		}, []string{"method", "code"}),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshd_registrations_total", Help: "First registrations of an agent id.",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_refusals_total", Help: "Requests refused, by reason (no_certificate, unknown_ca, expired, revoked, identity_mismatch, ...).",
		}, []string{"reason"}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_evictions_total", Help: "Agents evicted, by cause.",
		}, []string{"cause"}),
		closedConns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshd_evicted_connections_total", Help: "Open connections closed because their peer lost trust.",
		}),
	}
	m.watchers = prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshd_revocation_watchers", Help: "Open /revocations/watch streams."})
	m.legacyUses = prometheus.NewCounter(prometheus.CounterOpts{Name: "meshd_legacy_secret_uses_total", Help: "Agent-route requests admitted with the legacy shared secret instead of a certificate (--legacy-secret-compat)."})
	m.unauthenticated = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshd_unauthenticated_requests_total", Help: "Agent-route requests admitted without a client certificate (TLS mode auto), by route.",
	}, []string{"route"})
	m.unauthRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshd_unauthenticated_refusals_total", Help: "Agent-route requests of callers without a client certificate (TLS mode auto) refused by the bounds on what they may make meshd hold, by reason (certless_agents, certless_source_agents, certless_rate, certless_payload, certless_bytes, certless_source_bytes).",
	}, []string{"reason"})
	m.enrollRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshd_enroll_refusals_total", Help: "POST /enroll requests refused, by reason (rate_limited, bad_token, bad_secret, policy, ...); also counted in meshd_refusals_total.",
	}, []string{"reason"})
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshd_rate_limited_total", Help: "Requests refused by a rate limit or stream cap, by limiter (enroll_source, enroll_global, agent_cert, watch_streams).",
	}, []string{"limiter"})
	// Every limiter is exported from the start, at 0, so a rate over it
	// is 0 rather than no data.
	for _, l := range []string{limitEnrollSource, limitEnrollGlobal, limitAgentCert, limitWatchStreams} {
		m.rateLimited.WithLabelValues(l)
	}
	m.reg.MustRegister(m.watchers, m.legacyUses, m.unauthenticated, m.unauthRefusals, m.enrollRefusals, m.rateLimited,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshd_unauthenticated_agents", Help: "Agents registered without a client certificate (TLS mode auto) that meshd holds.",
		}, func() float64 { n, _ := agents.CertlessUsage(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshd_unauthenticated_agent_bytes", Help: "Stored payload bytes of the agents registered without a client certificate (TLS mode auto).",
		}, func() float64 { _, b := agents.CertlessUsage(); return float64(b) }))
	m.reg.MustRegister(m.heartbeats, m.registrations, m.refusals, m.evictions, m.closedConns,
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(goMemoryMetrics)), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshd_verify_cache_hits_total", Help: "Certificate verifications answered from the cache.",
		}, func() float64 { h, _ := chain.CacheStats(); return float64(h) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshd_verify_cache_misses_total", Help: "Certificate verifications computed.",
		}, func() float64 { _, mi := chain.CacheStats(); return float64(mi) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshd_agents", Help: "Registered agents.",
		}, func() float64 { return float64(agents.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshd_server_certificate_expiry_timestamp_seconds", Help: "When the agent port's certificate expires.",
		}, func() float64 { return float64(serverCert().Unix()) }),
		&expiryCollector{agents: agents},
	)
	if crlAge != nil {
		// Re-signed every third of its validity: an age past that means
		// re-signing fails (see the log) and the CRL is heading for expiry.
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshd_crl_age_seconds", Help: "Age of the published CRL: seconds since its this-update.",
		}, func() float64 { return crlAge().Seconds() }))
	}
	return m
}

// expiryCollector reports each registered agent's certificate expiry at
// scrape time, so it costs nothing between scrapes.
type expiryCollector struct{ agents Registry }

var expiryDesc = prometheus.NewDesc("meshd_agent_certificate_expiry_timestamp_seconds",
	"When the certificate an agent registered with expires, per agent and certificate identity.",
	[]string{"agent_id", "identity"}, nil)

func (c *expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- expiryDesc }

func (c *expiryCollector) Collect(ch chan<- prometheus.Metric) {
	c.agents.Expiry(func(id, owner string, notAfter time.Time) {
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, float64(notAfter.Unix()), id, owner)
	})
}

// listenMetrics serves GET /metrics alone on Config.MetricsListen.
func (s *Server) listenMetrics() error {
	ln, err := net.Listen("tcp", s.cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	s.metricsLn = ln
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	s.metricsSrv = s.httpServer(mux)
	s.serve(s.metricsSrv, ln)
	return nil
}

// MetricsAddr returns the metrics listener's bound address, if any.
func (s *Server) MetricsAddr() string {
	if s.metricsLn == nil {
		return ""
	}
	return s.metricsLn.Addr().String()
}
