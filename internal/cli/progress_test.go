package cli

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/logtest"
)

// TestProgressConcurrent: counters, steps, a wait and log lines written
// above the progress line from many goroutines: every log line reaches
// the terminal whole, on a line of its own, and the line ends cleared.
func TestProgressConcurrent(t *testing.T) {
	var out logtest.Buffer // safe for concurrent writers, as a terminal is
	p := &progress{w: &out, now: time.Now}
	log := p.Above(&out)
	stop := p.Wait("waiting for the test")
	const workers, each = 8, 200
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				switch i % 3 {
				case 0:
					p.Count("entries", i, each)
				case 1:
					p.Step("worker %d step %d", w, i)
				default:
					fmt.Fprintf(log, "log line %d-%d\n", w, i)
				}
			}
		}()
	}
	wg.Wait()
	stop()
	p.Done()
	got := out.String()
	for w := range workers {
		for i := 2; i < each; i += 3 {
			// A log line is drawn after the line is cleared, whole.
			if want := fmt.Sprintf("\r\x1b[Klog line %d-%d\n", w, i); !strings.Contains(got, want) {
				t.Fatalf("log line %d-%d is missing or broken", w, i)
			}
		}
	}
	if !strings.HasSuffix(got, "\r\x1b[K") {
		t.Errorf("the progress line was not cleared at the end: %q", got[max(0, len(got)-80):])
	}
}

// TestProgressSilent: without a terminal nothing is drawn, and Above is
// the writer itself.
func TestProgressSilent(t *testing.T) {
	var out bytes.Buffer
	p := &progress{}
	p.Step("x")
	p.Count("x", 1, 2)
	p.Wait("x")()
	p.Done()
	if w := p.Above(&out); w != &out {
		t.Errorf("Above of a silent progress is %T, want the writer itself", w)
	}
	if out.Len() != 0 {
		t.Errorf("silent progress wrote %q", out.String())
	}
}
