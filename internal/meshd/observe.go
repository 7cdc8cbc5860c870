package meshd

import (
	"context"
	"crypto/x509"
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshapi"
)

// Intervals of the observer's refreshes: what it reads from the store
// is read on these timers, never per scrape, so a scraper (the metrics
// listener has no authentication) costs meshd no query.
const (
	// storeSeqRefresh: how often the store's newest event Seq is read
	// (one indexed query), for meshd_change_feed_store_seq.
	storeSeqRefresh = 10 * time.Second
	// dueRefresh: how often the certificates due for renewal are counted
	// (a read of every recorded certificate), for
	// meshd_certificates_due_renewal. Renewal windows are days long.
	dueRefresh = 5 * time.Minute
	// DefaultAuditVerifyInterval is Config.AuditVerifyInterval's default.
	DefaultAuditVerifyInterval = time.Hour
)

// evictionBuckets are meshd_revocation_eviction_seconds' bounds: 1 ms to
// 10 s. A revocation is meant to take effect in well under a second.
var evictionBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// observer holds what meshd exports about itself beyond the routes'
// metrics: values refreshed on timers (its fields are atomics, written by
// the refresh loop and read by scrapes; no lock) and the histogram of
// revocation-to-eviction latency.
type observer struct {
	evictLatency *prometheus.HistogramVec
	// storeSeq is the store's newest event Seq at the last refresh (-1
	// before the first).
	storeSeq atomic.Int64
	// due is how many certificates are due for renewal (-1 before the
	// first count).
	due atomic.Int64
	// auditIntact is 1 when the last verification of the audit log found
	// it intact, 0 when it found it tampered with, -1 before the first or
	// when the last could not run (the store unreachable); auditAt is when
	// the last one that ran ended, in Unix seconds.
	auditIntact, auditAt atomic.Int64
	// lastAudit is the last verification's outcome, in full, nil before
	// the first.
	lastAudit atomic.Pointer[meshapi.StatusAudit]
}

func newObserver() *observer {
	o := &observer{evictLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "meshd_revocation_eviction_seconds",
		Help:    "From a revocation's time in the store to this meshd having refused it, closed the matching connections and evicted the matching agents, per applied revocation, by cause (certificate_revoked, identity_revoked, entity_revoked).",
		Buckets: evictionBuckets,
	}, []string{"cause"})}
	for _, c := range []string{"certificate_revoked", "identity_revoked", "entity_revoked"} {
		o.evictLatency.WithLabelValues(c)
	}
	o.storeSeq.Store(-1)
	o.due.Store(-1)
	o.auditIntact.Store(-1)
	return o
}

// observeEviction records that a revocation stored at at took effect here
// at now. A revocation another process's clock dated later counts as 0.
func (o *observer) observeEviction(cause string, at, now time.Time) {
	if at.IsZero() {
		return
	}
	o.evictLatency.WithLabelValues(cause).Observe(max(0, now.Sub(at).Seconds()))
}

// observerMetrics returns meshd's own metrics, for server.Deps.Collectors.
func (m *Meshd) observerMetrics() []prometheus.Collector {
	o := m.obs
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	out := []prometheus.Collector{o.evictLatency, &censusCollector{m},
		gauge("meshd_change_feed_staleness_seconds", "Seconds since this meshd last read the change feed from the store without an error: how stale its trust state may be (a replica that cannot see the store).", func() float64 {
			at, _ := m.events.Synced()
			return max(0, m.cfg.Now().Sub(at).Seconds())
		}),
		gauge("meshd_change_feed_staleness_bound_seconds", "This meshd's staleness bound (--staleness-bound): once meshd_change_feed_staleness_seconds is above it, a replica on PostgreSQL refuses heartbeats, issuance and everything else that depends on revocation state with 503 (replica_stale) until it reads the store again.", func() float64 {
			return m.cfg.StalenessBound.Seconds()
		}),
		gauge("meshd_change_feed_applied_seq", "The change feed's cursor in this meshd: every event at or below this Seq has been taken in.", func() float64 {
			_, cursor := m.events.Synced()
			return float64(cursor)
		}),
		gauge("meshd_change_feed_store_seq", "The store's newest change event Seq, read every 10s (-1 before the first read); above meshd_change_feed_applied_seq for long, this meshd lags the store.", func() float64 {
			return float64(o.storeSeq.Load())
		}),
	}
	if w := m.caSecret; w != nil {
		out = append(out, gauge("meshd_ca_secret_degraded", "1 while the CA Secret's contents (--ca-from-secret) cannot be adopted and meshd signs with the intermediate it had; else 0.", func() float64 {
			if w.degraded.Load() != nil {
				return 1
			}
			return 0
		}), prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "meshd_ca_secret_rejections_total",
			Help: "Versions of the CA Secret (--ca-from-secret) meshd refused (unreadable, not parsing, key not matching, not chaining to the mesh's root), and adoptions that failed.",
		}, func() float64 { return float64(w.rejections.Load()) }))
	}
	if m.auth == nil {
		return out
	}
	cfg := m.auth.Config()
	expiry := func(which string, cert func() *x509.Certificate) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshd_ca_certificate_expiry_timestamp_seconds", ConstLabels: prometheus.Labels{"certificate": which},
			Help: "When the mesh CA's root and active intermediate expire, by certificate (root, intermediate).",
		}, func() float64 { return float64(cert().NotAfter.Unix()) })
	}
	return append(out, expiry("root", m.auth.Root), expiry("intermediate", m.auth.ActiveIntermediate),
		gauge("meshd_crl_validity_seconds", "The CRL's validity, next-update minus this-update (--crl-validity); it is re-signed every third of it.", func() float64 {
			return cfg.CRLValidity.Seconds()
		}),
		gauge("meshd_certificates_due_renewal", "Unexpired, unrevoked certificates the store records past their renewal point whose identity was not renewed (meshctl ca list shows them as expiring), counted every 5 minutes (-1 before the first count).", func() float64 {
			return float64(o.due.Load())
		}),
		gauge("meshd_audit_verified", "1 when meshd's last verification of the audit log (hash chain and signed checkpoints, every --audit-verify-interval) found it intact, 0 when it found it tampered with, -1 before the first or when the last could not run.", func() float64 {
			return float64(o.auditIntact.Load())
		}),
		gauge("meshd_audit_last_verification_timestamp_seconds", "When meshd last verified the audit log to the end (intact or not); 0 before the first.", func() float64 {
			return float64(o.auditAt.Load())
		}))
}

// censusCollector reports the registered agents by status, entity and
// trust source at scrape time, from the registry's memory.
type censusCollector struct{ m *Meshd }

var censusDesc = prometheus.NewDesc("meshd_registered_agents",
	"Agents this meshd holds, by status (healthy, unhealthy, evicted), entity (\"\" for the mesh's own CAs) and trust source (the backend that admitted them).",
	[]string{"status", "entity", "source"}, nil)

func (c *censusCollector) Describe(ch chan<- *prometheus.Desc) { ch <- censusDesc }

func (c *censusCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.reg.Census(func(status, entity, source string, n int) {
		ch <- prometheus.MustNewConstMetric(censusDesc, prometheus.GaugeValue, float64(n), status, entity, source)
	})
}

// observeLoop refreshes the observer's values from the store: at once,
// then each on its timer, until ctx ends.
func (m *Meshd) observeLoop(ctx context.Context) {
	seq, due, audit := time.NewTicker(storeSeqRefresh), time.NewTicker(dueRefresh), time.NewTicker(m.cfg.AuditVerifyInterval)
	defer seq.Stop()
	defer due.Stop()
	defer audit.Stop()
	m.refreshStoreSeq(ctx)
	if m.auth != nil {
		m.refreshDue(ctx)
		m.verifyAudit(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-seq.C:
			m.refreshStoreSeq(ctx)
		case <-due.C:
			if m.auth != nil {
				m.refreshDue(ctx)
			}
		case <-audit.C:
			if m.auth != nil {
				m.verifyAudit(ctx)
			}
		}
	}
}

func (m *Meshd) refreshStoreSeq(ctx context.Context) {
	seq, err := m.st.LastEventSeq(ctx)
	if err != nil {
		// meshd_change_feed_staleness_seconds shows the store unreachable;
		// the last value read stays.
		return
	}
	m.obs.storeSeq.Store(seq)
}

func (m *Meshd) refreshDue(ctx context.Context) {
	due, err := m.auth.DueForRenewal(ctx)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("counting the certificates due for renewal failed; meshd_certificates_due_renewal keeps its last value", "err", err)
		}
		return
	}
	m.obs.due.Store(int64(len(due)))
}

// verifyAudit checks the audit log to its end against the CA's signed
// checkpoints, as `meshctl ca audit --verify` does, and exports the
// result (meshd_audit_verified).
func (m *Meshd) verifyAudit(ctx context.Context) {
	err := m.auditIntact(ctx)
	switch {
	case err == nil:
		m.obs.auditIntact.Store(1)
	case errors.Is(err, store.ErrAuditTampered):
		m.obs.auditIntact.Store(0)
		m.log.Error("the audit log does not verify: it was changed or cut short (keep the store and the checkpoints file as they are, and run meshctl ca audit --verify)", "err", err)
	default:
		if ctx.Err() == nil {
			m.log.Warn("verifying the audit log failed; retrying at the next interval", "err", err)
		}
		m.obs.auditIntact.Store(-1)
		return
	}
	m.obs.auditAt.Store(m.cfg.Now().Unix())
}

func (m *Meshd) auditIntact(ctx context.Context) error {
	rep, err := ca.VerifyLog(ctx, m.auth.Config(), m.st, "", nil)
	last := &meshapi.StatusAudit{VerifiedAt: m.cfg.Now().UTC(), OK: err == nil, Entries: rep.Entries, Checkpoints: rep.Checkpoints}
	if err != nil {
		last.Error = err.Error()
	}
	m.obs.lastAudit.Store(last)
	return err
}

// lastAudit returns meshd's last verification of the audit log, nil
// before the first (GET /admin/status).
func (m *Meshd) lastAudit() *meshapi.StatusAudit { return m.obs.lastAudit.Load() }
