package enroll_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/credentials/enroll/enrolltest"
)

// serverNode is clockedNode against a meshd whose answers carry
// renew_after from at.
func serverNode(t *testing.T, at func(*x509.Certificate) time.Time) (*fakeClock, *enrolltest.Server, *enroll.Client, enroll.Dir) {
	t.Helper()
	clk := newFakeClock(time.Now())
	s := enrolltest.NewServer(t, enrolltest.Config{Secret: secret, Now: clk.Now, RenewAfter: at})
	c := &enroll.Client{Server: s.URL, Roots: s.Roots()}
	return clk, s, c, node(t, s, c)
}

func fraction(c *x509.Certificate, f float64) time.Time {
	return c.NotBefore.Add(time.Duration(float64(c.NotAfter.Sub(c.NotBefore)) * f))
}

// TestRenewerHonoursRenewAfter: once a renewal's answer carries
// renew_after, the Renewer plans on it: as given when it is before its
// own due time (meshd spread its holders), and never later than its own
// rule.
func TestRenewerHonoursRenewAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		f    float64 // where meshd puts renew_after, as a fraction of the life
		want func(leaf *x509.Certificate, jitter time.Duration) time.Time
	}{
		{"earlier than the local rule", 0.5, func(l *x509.Certificate, _ time.Duration) time.Time { return fraction(l, 0.5) }},
		{"later: the local rule, jitter kept", 0.95, func(l *x509.Certificate, j time.Duration) time.Time { return fraction(l, 2.0/3).Add(j) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk, _, c, dir := serverNode(t, func(l *x509.Certificate) time.Time { return fraction(l, tc.f) })
			r, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{Clock: clk, Rand: func(n int64) int64 { return n - 1 }})
			if err != nil {
				t.Fatal(err)
			}
			// Loaded from the Dir: the local rule, meshd's point unknown.
			if due := r.Due(); !due.Equal(enroll.RenewAt(r.Certificate().Leaf, 2.0/3)) {
				t.Fatalf("Due from the Dir = %s, want the local 2/3", due)
			}
			if _, err := r.RenewNow(t.Context()); err != nil {
				t.Fatal(err)
			}
			leaf := r.Certificate().Leaf
			jitter := time.Duration(float64(leaf.NotAfter.Sub(leaf.NotBefore))*0.05) - 1
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			want := tc.want(leaf, jitter).Sub(clk.Now())
			if got := clk.NextWait(t, 10*time.Second); got != want {
				t.Errorf("wait %s, want %s", got, want)
			}
			if tc.f < 2.0/3 {
				if due := r.Due(); !due.Equal(fraction(leaf, tc.f)) {
					t.Errorf("Due = %s, want meshd's %s", due, fraction(leaf, tc.f))
				}
			}
			cancel()
			<-done
		})
	}
}

// TestRenewerRenewAfterLoop: a renew_after meshd puts at the very start of
// a fresh certificate is taken as the end of its first hundredth, so a
// confused or hostile meshd cannot make the Renewer renew in a loop.
func TestRenewerRenewAfterLoop(t *testing.T) {
	t.Parallel()
	clk, _, c, dir := serverNode(t, func(l *x509.Certificate) time.Time { return l.NotBefore })
	r, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{Clock: clk, Rand: func(n int64) int64 { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.RenewNow(t.Context()); err != nil {
		t.Fatal(err)
	}
	leaf := r.Certificate().Leaf
	if due, floor := r.Due(), fraction(leaf, 0.01); due.Before(floor) {
		t.Fatalf("Due = %s, before the first hundredth of the life (%s)", due, floor)
	}
}

// TestRenewerRenewByAndTainted: meshd's header (RenewBy) and its taint
// event (Tainted) bring the renewal forward for the current
// certificates; a later request never moves an earlier one back, a taint
// of another intermediate changes nothing, and the renewed certificates
// plan on their own again.
func TestRenewerRenewByAndTainted(t *testing.T) {
	t.Parallel()
	clk, s, c, dir := clockedNode(t)
	r, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{Clock: clk, Rand: func(n int64) int64 { return n - 1 }, TaintDelay: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	local := r.Due()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	clk.NextWait(t, 10*time.Second) // the local schedule

	r.RenewBy(clk.Now().Add(time.Hour))
	if got := clk.NextWait(t, 10*time.Second); got != time.Hour {
		t.Fatalf("after RenewBy(+1h): wait %s", got)
	}
	byHour := r.Due()
	r.RenewBy(clk.Now().Add(2 * time.Hour)) // later: ignored
	if due := r.Due(); !due.Equal(byHour) {
		t.Fatalf("after RenewBy(+2h): Due %s, want %s still", due, byHour)
	}
	if r.Tainted("00ff") {
		t.Fatal("Tainted of an intermediate that issued none of the certificates")
	}
	if !r.Tainted(hex.EncodeToString(s.Intermediate.SubjectKeyId)) {
		t.Fatal("Tainted of the issuing intermediate reported false")
	}
	if got := clk.NextWait(t, 10*time.Second); got != 30*time.Second {
		t.Fatalf("after Tainted: wait %s, want the TaintDelay drawn (30s)", got)
	}
	first := r.Certificate()
	clk.Advance(30 * time.Second)
	waitUpdated(t, r)
	if r.Certificate() == first {
		t.Fatal("not renewed")
	}
	// The new generation plans on its own: the hint was for the old one.
	if due := r.Due(); !due.After(local) {
		t.Errorf("Due after the renewal = %s, not past the old certificates' %s", due, local)
	}
	cancel()
	<-done
}

// TestClientRenewAfter: the header of GET /health, clamped into the
// certificate's life; none from a meshd that sends none.
func TestClientRenewAfter(t *testing.T) {
	t.Parallel()
	_, s, c, dir := clockedNode(t)
	n, err := dir.Load()
	if err != nil {
		t.Fatal(err)
	}
	at, err := c.RenewAfter(t.Context(), n.Certificate)
	if err != nil || !at.IsZero() {
		t.Fatalf("no header: %s, %v", at, err)
	}
	want := time.Now().Add(time.Minute).UTC().Truncate(time.Second)
	s.SetRenewHeader(want.Format(time.RFC3339))
	if at, err = c.RenewAfter(t.Context(), n.Certificate); err != nil || !at.Equal(want) {
		t.Fatalf("header: %s, %v; want %s", at, err, want)
	}
	s.SetRenewHeader("1999-01-01T00:00:00Z")
	if at, _ = c.RenewAfter(t.Context(), n.Certificate); !at.Equal(n.Certificate.Leaf.NotBefore) {
		t.Fatalf("a time before the certificate: %s, want its NotBefore", at)
	}
	s.SetRenewHeader("soon")
	if at, _ = c.RenewAfter(t.Context(), n.Certificate); !at.IsZero() {
		t.Fatalf("an unreadable header: %s, want zero", at)
	}
}

// TestRenewByConcurrent: requests from many goroutines (heartbeat answers,
// taint events) leave the earliest one for the generation.
func TestRenewByConcurrent(t *testing.T) {
	t.Parallel()
	clk, _, c, dir := clockedNode(t)
	r, err := enroll.NewRenewer(c, dir, enroll.RenewerConfig{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	base := clk.Now()
	done := make(chan time.Time, 8)
	for g := range 8 {
		go func() {
			earliest := base.Add(24 * time.Hour)
			for i := range 500 {
				at := base.Add(time.Duration((i*7919+g*104729)%86400) * time.Second)
				r.RenewBy(at)
				if at.Before(earliest) {
					earliest = at
				}
				if due := r.Due(); due.After(at) {
					t.Errorf("goroutine %d: Due %s after its own request %s", g, due, at)
					break
				}
			}
			done <- earliest
		}()
	}
	want := base.Add(24 * time.Hour)
	for range 8 {
		if e := <-done; e.Before(want) {
			want = e
		}
	}
	if due := r.Due(); !due.Equal(want) {
		t.Fatalf("Due %s, want the earliest request %s", due, want)
	}
}
