package server

import (
	"math"
	"net"
	"net/netip"
	"sync"
	"time"
)

// limiter is a token bucket per key (a source prefix, a node): burst
// attempts at once, then one more every interval. Its memory is bounded:
// past maxBuckets keys, full buckets are forgotten (they would allow a
// burst anyway), and if none is full a new key is refused until one is.
//
// It also rations the audit entries refusals deserve: the first refusal
// of a key in each auditWindow is to be audited, with how many refusals it
// stands for, so a flood of refusals writes one row a minute, not one each.
type limiter struct {
	burst    float64
	interval time.Duration
	max      int

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
	// refused counts refusals since the last audited one, at lastAudit.
	refused   int
	lastAudit time.Time
}

// maxBuckets bounds a limiter's memory.
const maxBuckets = 1 << 16

// auditWindow is how often a key's refusals are audited at most.
const auditWindow = time.Minute

func newLimiter(burst int, interval time.Duration) *limiter {
	return &limiter{burst: float64(burst), interval: interval, max: maxBuckets, buckets: make(map[string]*bucket)}
}

// verdict is one limiter decision.
type verdict struct {
	ok bool
	// wait is how long until a token is free, when !ok.
	wait time.Duration
	// audit is set on the refusal that should be audited; it stands for
	// itself and suppressed earlier ones.
	audit      bool
	suppressed int
}

// allow takes a token for key at now.
func (l *limiter) allow(key string, now time.Time) verdict {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.max {
			l.forgetFull(now)
		}
		if len(l.buckets) >= l.max {
			// Every tracked key is busy: admitting a new one would let an
			// attacker with many addresses grow the map without bound.
			return verdict{wait: l.interval}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = math.Min(l.burst, b.tokens+float64(now.Sub(b.last))/float64(l.interval))
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return verdict{ok: true}
	}
	v := verdict{wait: time.Duration((1 - b.tokens) * float64(l.interval))}
	b.refused++
	if now.Sub(b.lastAudit) >= auditWindow {
		v.audit, v.suppressed = true, b.refused-1
		b.refused, b.lastAudit = 0, now
	}
	return v
}

func (l *limiter) forgetFull(now time.Time) {
	for key, b := range l.buckets {
		if b.tokens+float64(now.Sub(b.last))/float64(l.interval) >= l.burst && now.Sub(b.lastAudit) >= auditWindow {
			delete(l.buckets, key)
		}
	}
}

// sourceKey is the key a caller's address is limited under: an IPv4
// address as it is, an IPv6 address by its /64, since one host is handed a
// whole /64 and would otherwise have 2^64 addresses to rotate through.
func sourceKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	addr = addr.Unmap()
	if addr.Is4() {
		return addr.String()
	}
	p, _ := addr.Prefix(64)
	return p.String()
}

// slots caps concurrent long-lived responses (revocation streams): at most
// max in all and perKey per key, so no caller can hold meshd's file
// descriptors and memory.
type slots struct {
	max, perKey int

	mu    sync.Mutex
	total int
	byKey map[string]int
}

func newSlots(max, perKey int) *slots {
	return &slots{max: max, perKey: perKey, byKey: map[string]int{}}
}

// acquire takes a slot for key, or reports why none is free: "total" or
// "key". release gives it back; it is safe to call once.
func (s *slots) acquire(key string) (release func(), full string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.total >= s.max:
		return nil, "total"
	case s.byKey[key] >= s.perKey:
		return nil, "key"
	}
	s.total++
	s.byKey[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.total--
			if s.byKey[key]--; s.byKey[key] == 0 {
				delete(s.byKey, key)
			}
			s.mu.Unlock()
		})
	}, ""
}
