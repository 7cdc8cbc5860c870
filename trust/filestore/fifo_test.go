//go:build unix

package filestore_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/pkitest"
	"github.com/meshtrust/meshtrust/trust/filestore"
)

// A FIFO named *.pem in the trust dir is refused without being read from:
// a read that blocked would hold the Backend's lock, and a CA deleted
// afterwards would stay trusted. The removal must take effect, through
// Reload and through the watcher alike.
func TestFIFOIsRefusedWithoutBlocking(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	own, partner := pkitest.NewRoot(t, "mesh root"), pkitest.NewRoot(t, "partner root")
	write(t, filepath.Join(dir, "mesh.pem"), own.PEM())
	write(t, filepath.Join(dir, "entities", "partner-corp.pem"), partner.PEM())
	// The watcher waits an hour: Reload is what this test drives.
	s, logs := open(t, dir, filestore.WithDebounce(time.Hour))
	if err := admits(t, s, partner.Leaf(t, "scout"), "partner-corp")(); err != nil {
		t.Fatal(err)
	}

	fifos := []string{filepath.Join(dir, "pipe.pem"), filepath.Join(dir, "entities", "pipe.pem")}
	for _, p := range fifos {
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Skipf("mkfifo: %v", err)
		}
	}
	if err := os.Remove(filepath.Join(dir, "entities", "partner-corp.pem")); err != nil {
		t.Fatal(err)
	}
	reload(t, s, fifos)

	if err := refuses(t, s, partner.Leaf(t, "scout"))(); err != nil {
		t.Errorf("the deleted entity's CA after Reload: %v", err)
	}
	if err := admits(t, s, own.Leaf(t, "opus@ct111"), "")(); err != nil {
		t.Errorf("the mesh CA after Reload: %v", err)
	}
	if got := s.Entities(); len(got) != 0 {
		t.Errorf("Entities = %q, want none", got)
	}
	out := logs.String()
	for _, want := range []string{"pipe.pem", "not a regular file", "FIFO"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	// A second Reload over the same FIFOs neither blocks nor warns again.
	// Counted by the warning's own words: the temporary directory's name
	// holds the test's ("FIFO"), and the watcher's debug lines of late
	// events name files in it.
	n := strings.Count(out, "not a regular file")
	reload(t, s, fifos)
	if got := strings.Count(logs.String(), "not a regular file"); got != n {
		t.Errorf("the FIFOs were warned about again: %d lines, want %d", got, n)
	}
}

// reload runs s.Reload, failing the test if it has not returned within
// 10s; then it unblocks a reader stuck on fifos (by opening them for
// writing) so that the test can end.
func reload(t *testing.T, s *filestore.Backend, fifos []string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Reload() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Reload: %v", err)
		}
		return
	case <-time.After(10 * time.Second):
		t.Errorf("Reload has not returned after 10s: blocked on a FIFO")
	}
	for {
		for _, p := range fifos {
			// With O_NONBLOCK, opening for writing fails (ENXIO) unless
			// a reader is blocked on the FIFO, and then releases it.
			if f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				f.Close()
			} else if !errors.Is(err, syscall.ENXIO) {
				t.Logf("unblock %s: %v", p, err)
			}
		}
		select {
		case <-done:
			t.FailNow()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
