package server

import (
	"fmt"
	"testing"
	"time"
)

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:5000":             "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:443": "2001:db8:1:2::/64", // same /64: one source
		"[2001:db8:1:3::1]:443":      "2001:db8:1:3::/64",
		"[::ffff:192.0.2.7]:1":       "192.0.2.7", // IPv4-mapped is IPv4
		"not an address":             "not an address",
		"[fe80::1%eth0]:1":           "fe80::/64",
		"127.0.0.1":                  "127.0.0.1",
	} {
		if got := sourceKey(in); got != want {
			t.Errorf("sourceKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestLimiterMemoryBounded: past its key limit, a limiter forgets idle
// keys and refuses new ones while every key is busy, instead of growing.
func TestLimiterMemoryBounded(t *testing.T) {
	l := newLimiter(1, time.Hour)
	l.max = 100
	now := time.Unix(1000, 0)
	for i := range 100 {
		if !l.allow(fmt.Sprint(i), now).ok {
			t.Fatalf("key %d refused its first attempt", i)
		}
	}
	if v := l.allow("new", now); v.ok || len(l.buckets) != 100 {
		t.Errorf("a new key while 100 are busy: ok=%v with %d keys, want refused and 100", v.ok, len(l.buckets))
	}
	// An hour later every bucket is full again: forgotten, room for new.
	if v := l.allow("new", now.Add(2*time.Hour)); !v.ok || len(l.buckets) > 100 {
		t.Errorf("a new key once the others refilled: ok=%v with %d keys", v.ok, len(l.buckets))
	}
}

// TestLimiterAuditRation: a key's refusals are audited once per window,
// each audited one counting those it stands for.
func TestLimiterAuditRation(t *testing.T) {
	l := newLimiter(1, time.Hour)
	now := time.Unix(1000, 0)
	l.allow("a", now)
	audited, suppressed := 0, 0
	for i := range 100 {
		v := l.allow("a", now.Add(time.Duration(i)*time.Second))
		if v.ok {
			t.Fatal("a refill within the hour")
		}
		if v.audit {
			audited++
			suppressed += v.suppressed
		}
	}
	if audited != 2 || suppressed != 59 {
		t.Errorf("100 refusals over 100 s: %d audited standing for %d more, want 2 and 59", audited, suppressed)
	}
}

// TestSlots: streams are capped per key and in all; a release is counted
// once.
func TestSlots(t *testing.T) {
	s := newSlots(3, 2)
	r1, _ := s.acquire("a")
	s.acquire("a")
	if _, full := s.acquire("a"); full != "key" {
		t.Errorf("a third slot for one key: %q, want key", full)
	}
	s.acquire("b")
	if _, full := s.acquire("c"); full != "total" {
		t.Errorf("a fourth slot in all: %q, want total", full)
	}
	r1()
	r1()
	if _, full := s.acquire("c"); full != "" {
		t.Errorf("after one release: %q, want a slot", full)
	}
	if _, full := s.acquire("d"); full != "total" {
		t.Errorf("a double release freed two slots")
	}
}
