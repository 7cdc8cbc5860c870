package credentials_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/internal/pkitest"
)

// The implementations of Source in this module.
var _ credentials.Source = (*credentials.Holder)(nil)

// wait is how long a test waits for something that should happen at once.
const wait = 10 * time.Second

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func requireChanged(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatal("Changed was not closed")
	}
}

func TestHolder(t *testing.T) {
	t.Parallel()
	ca := pkitest.NewRoot(t, "root")
	var h credentials.Holder
	if _, err := h.Current(); err == nil || errors.Is(err, credentials.ErrClosed) {
		t.Fatalf("Current of an empty Holder = %v, want a not-yet error", err)
	}
	ch0 := h.Changed()
	if closed(ch0) || h.Changed() != ch0 {
		t.Fatal("Changed of an empty Holder: want one open channel")
	}

	a := creds(t, ca, "a", ca)
	if err := h.Set(a); err != nil {
		t.Fatal(err)
	}
	if !closed(ch0) {
		t.Error("Set did not close the pending Changed channel")
	}
	ch1 := h.Changed()
	if closed(ch1) || ch1 == ch0 {
		t.Error("after Set, Changed must return a new open channel")
	}
	if got, err := h.Current(); err != nil || got != a {
		t.Errorf("Current = %v, %v; want the credentials set", got, err)
	}

	// Unusable credentials are refused and change nothing.
	other := issue(t, ca, "b")
	mismatched := issue(t, ca, "a")
	mismatched.PrivateKey = other.PrivateKey
	noKey := issue(t, ca, "a")
	noKey.PrivateKey = nil
	for name, bad := range map[string]*credentials.Credentials{
		"nil":                  nil,
		"empty":                {},
		"no key":               {Certificate: noKey},
		"another leaf's key":   {Certificate: mismatched},
		"unparsed leaf":        {Certificate: tls.Certificate{Certificate: a.Certificate.Certificate, PrivateKey: a.Certificate.PrivateKey}},
		"key that cannot sign": {Certificate: tls.Certificate{Certificate: a.Certificate.Certificate, PrivateKey: "key", Leaf: a.Certificate.Leaf}},
	} {
		if err := h.Set(bad); err == nil {
			t.Errorf("Set(%s) succeeded", name)
		}
	}
	if closed(ch1) {
		t.Error("a refused Set closed Changed")
	}
	if got, _ := h.Current(); got != a {
		t.Error("a refused Set changed the credentials")
	}

	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if !closed(ch1) || !closed(h.Changed()) {
		t.Error("Close must close the pending Changed channel and every later one")
	}
	if _, err := h.Current(); !errors.Is(err, credentials.ErrClosed) {
		t.Errorf("Current after Close = %v, want ErrClosed", err)
	}
	if err := h.Set(a); !errors.Is(err, credentials.ErrClosed) {
		t.Errorf("Set after Close = %v, want ErrClosed", err)
	}
	if err := h.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// TestHolderConcurrent: readers following the Holder while it changes
// always see a whole generation and never miss the last one.
func TestHolderConcurrent(t *testing.T) {
	t.Parallel()
	ca := pkitest.NewRoot(t, "root")
	gens := make([]*credentials.Credentials, 20)
	for i := range gens {
		gens[i] = creds(t, ca, "a", ca)
	}
	h := new(credentials.Holder)
	if err := h.Set(gens[0]); err != nil {
		t.Fatal(err)
	}
	last := gens[len(gens)-1]
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				ch := h.Changed()
				c, err := h.Current()
				if err != nil || c.Certificate.Leaf == nil {
					t.Errorf("Current = %v, %v", c, err)
					return
				}
				if c == last {
					return
				}
				select {
				case <-ch:
				case <-time.After(wait):
					t.Error("missed a change")
					return
				}
			}
		})
	}
	for _, g := range gens[1:] {
		if err := h.Set(g); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

func TestWait(t *testing.T) {
	t.Parallel()
	ca := pkitest.NewRoot(t, "root")
	a := creds(t, ca, "a", ca)

	t.Run("ready", func(t *testing.T) {
		t.Parallel()
		h := new(credentials.Holder)
		if err := h.Set(a); err != nil {
			t.Fatal(err)
		}
		if got, err := credentials.Wait(t.Context(), h); err != nil || got != a {
			t.Errorf("Wait = %v, %v", got, err)
		}
	})
	t.Run("later", func(t *testing.T) {
		t.Parallel()
		h := &credentials.Holder{}
		got := make(chan *credentials.Credentials)
		go func() {
			c, err := credentials.Wait(t.Context(), h)
			if err != nil {
				t.Error(err)
			}
			got <- c
		}()
		if err := h.Set(a); err != nil {
			t.Fatal(err)
		}
		if c := <-got; c != a {
			t.Errorf("Wait returned %v", c)
		}
	})
	t.Run("ctx ends", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := credentials.Wait(ctx, &credentials.Holder{})
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "no credentials yet") {
			t.Errorf("Wait = %v, want context.Canceled and the source's reason", err)
		}
	})
	t.Run("closed", func(t *testing.T) {
		t.Parallel()
		h := &credentials.Holder{}
		done := make(chan error)
		go func() { _, err := credentials.Wait(t.Context(), h); done <- err }()
		h.Close()
		if err := <-done; !errors.Is(err, credentials.ErrClosed) {
			t.Errorf("Wait = %v, want ErrClosed", err)
		}
	})
}

func TestWatch(t *testing.T) {
	t.Parallel()
	ca := pkitest.NewRoot(t, "root")
	a, b := creds(t, ca, "a", ca), creds(t, ca, "b", ca)
	h := &credentials.Holder{}
	seen := make(chan *credentials.Credentials)
	done := make(chan error)
	go func() {
		done <- credentials.Watch(t.Context(), h, func(c *credentials.Credentials) error {
			seen <- c
			return nil
		})
	}()
	for _, want := range []*credentials.Credentials{a, b} {
		if err := h.Set(want); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-seen:
			if got != want {
				t.Errorf("Watch saw %s, want %s", got.Certificate.Leaf.Subject.CommonName, want.Certificate.Leaf.Subject.CommonName)
			}
		case <-time.After(wait):
			t.Fatal("Watch did not call fn after Set")
		}
	}
	h.Close()
	if err := <-done; !errors.Is(err, credentials.ErrClosed) {
		t.Errorf("Watch = %v, want ErrClosed", err)
	}

	// fn's error ends it.
	h2 := new(credentials.Holder)
	if err := h2.Set(a); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	if err := credentials.Watch(t.Context(), h2, func(*credentials.Credentials) error { return stop }); err != stop {
		t.Errorf("Watch = %v, want fn's error", err)
	}
	// So does ctx.
	ctx, cancel := context.WithCancel(t.Context())
	if err := credentials.Watch(ctx, h2, func(*credentials.Credentials) error { cancel(); return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Watch = %v, want context.Canceled", err)
	}
}

func TestNewTLSCertificate(t *testing.T) {
	t.Parallel()
	root := pkitest.NewRoot(t, "root")
	inter := root.Intermediate(t, "inter")
	good := issue(t, inter, "a")
	leaf := good.Leaf
	key := pkitest.NewKey(t)
	if _, err := credentials.NewTLSCertificate(nil, key); err == nil {
		t.Error("an empty chain accepted")
	}
	if _, err := credentials.NewTLSCertificate([]*x509.Certificate{leaf}, key); err == nil || !strings.Contains(err.Error(), "not the key of certificate \"a\"") {
		t.Errorf("another key: %v", err)
	}
	cert, err := credentials.NewTLSCertificate([]*x509.Certificate{leaf, inter.Cert}, good.PrivateKey.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf != leaf || len(cert.Certificate) != 2 || !bytes.Equal(cert.Certificate[1], inter.Cert.Raw) {
		t.Error("NewTLSCertificate: want the leaf parsed and the chain in order")
	}
}
