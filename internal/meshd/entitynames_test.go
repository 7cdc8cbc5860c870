package meshd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/trust"
)

func someCA(t *testing.T) []*x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{c}
}

// TestEntityNamesStress: while one source keeps adding and dropping an
// entity name that another source held first, and a name it holds alone,
// every check under -race gets the same answer: the first holder's
// certificates pass, the other source's under that name are refused, and
// a name one source holds alone passes. Once the first holder drops the
// name, the other source takes it.
func TestEntityNamesStress(t *testing.T) {
	ca := someCA(t)
	registered, files := trust.NewAnchors(BackendEntities), trust.NewAnchors(BackendFilestore)
	registered.Set("acme", ca)
	// files comes first in the chain, but registered held acme first.
	n := newEntityNames(slog.New(slog.NewTextHandler(io.Discard, nil)), []trust.Backend{files, registered}, nil)

	own := &trust.Peer{Backend: BackendEntities, Entity: "acme"}
	impostor := &trust.Peer{Backend: BackendFilestore, Entity: "acme"}
	alone := &trust.Peer{Backend: BackendFilestore, Entity: "globex"}
	mesh := &trust.Peer{Backend: BackendFilestore}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 200 {
			files.Set("acme", ca)
			files.Set("globex", ca)
			files.Remove("acme")
			files.Remove("globex")
		}
		close(stop)
	}()
	const checkers = 4
	bad := make([][]string, checkers)
	for i := range checkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if err := n.check(own); err != nil {
					bad[i] = append(bad[i], "own: "+err.Error())
				}
				if err := n.check(impostor); !errors.Is(err, server.ErrEntityNameTaken) {
					bad[i] = append(bad[i], "impostor admitted")
				}
				if err := n.check(alone); err != nil {
					bad[i] = append(bad[i], "alone: "+err.Error())
				}
				if err := n.check(mesh); err != nil {
					bad[i] = append(bad[i], "mesh: "+err.Error())
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	wg.Wait()
	for i, b := range bad {
		if len(b) > 0 {
			t.Errorf("checker %d got %d wrong answers, the first: %s", i, len(b), b[0])
		}
	}
	if h := n.otherHolder("acme", BackendEntities); h != "" {
		t.Errorf("otherHolder after the churn = %q, want none", h)
	}

	files.Set("acme", ca)
	if h := n.otherHolder("acme", BackendEntities); h != BackendFilestore {
		t.Errorf("otherHolder = %q, want filestore", h)
	}
	registered.Remove("acme")
	if err := n.check(impostor); err != nil {
		t.Errorf("once the first holder dropped acme, filestore's: %v, want it to hold the name", err)
	}
	registered.Set("acme", ca)
	if err := n.check(own); !errors.Is(err, server.ErrEntityNameTaken) {
		t.Errorf("the registered acme back while filestore holds the name: %v, want entity_name_taken", err)
	}
}
