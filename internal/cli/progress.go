package cli

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// terminal reports whether w is a terminal. Tests replace it
// (export_test.go) to see what a terminal would get.
var terminal = func(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressEvery is the least time between two redraws of a counter: a
// counter may advance far faster than a terminal is worth redrawing.
const progressEvery = 100 * time.Millisecond

// progress shows how a long operation advances, as one line on stderr
// that each update redraws, only when stderr is a terminal and --json is
// off: in a pipe, a log file or a script it writes nothing, and stdout
// never carries it. The zero value and a nil *progress are silent.
//
// Safe for concurrent use; mu is a leaf.
type progress struct {
	mu    sync.Mutex
	w     io.Writer // nil: silent
	now   func() time.Time
	drawn time.Time // when a counter was last drawn
	shown bool      // a line is on the screen
	text  string    // the line, to draw again below what Above writes
}

// progress returns cmd's reporter: silent unless stderr is a terminal and
// --json is off.
func (g *globals) progress(cmd *cobra.Command) *progress {
	w := cmd.ErrOrStderr()
	if g.jsonOut || !terminal(w) {
		return &progress{}
	}
	return &progress{w: w, now: time.Now}
}

// Step shows what the operation does now ("preparing the intermediate").
func (p *progress) Step(format string, args ...any) {
	if p == nil || p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.draw(fmt.Sprintf(format, args...))
}

// Count shows n of total done ("verified 2048 of 10000 entries"), at most
// every progressEvery, and always the last.
func (p *progress) Count(what string, n, total int) {
	if p == nil || p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.now()
	if n < total && p.shown && t.Sub(p.drawn) < progressEvery {
		return
	}
	p.drawn = t
	pct := 100
	if total > 0 {
		pct = n * 100 / total
	}
	p.draw(fmt.Sprintf("%s %d of %d (%d%%)", what, n, total, pct))
}

// Done clears the line, so that what the command prints next starts on a
// clean one.
func (p *progress) Done() {
	if p == nil || p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.shown = false
	}
}

// Wait shows what the operation waits for, with the time it has waited,
// redrawn every second until the returned stop is called (which clears
// the line).
func (p *progress) Wait(format string, args ...any) (stop func()) {
	if p == nil || p.w == nil {
		return func() {}
	}
	what := fmt.Sprintf(format, args...)
	start := p.now()
	show := func() {
		p.mu.Lock()
		p.draw(fmt.Sprintf("%s (%s)", what, p.now().Sub(start).Round(time.Second)))
		p.mu.Unlock()
	}
	show()
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				show()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			<-exited
			p.Done()
		})
	}
}

// Above returns a writer for lines that share the terminal with the
// progress line (a command's log): each write clears the line first and
// draws it again below. Without a terminal it is w itself.
func (p *progress) Above(w io.Writer) io.Writer {
	if p == nil || p.w == nil {
		return w
	}
	return above{p, w}
}

type above struct {
	p *progress
	w io.Writer
}

func (a above) Write(b []byte) (int, error) {
	a.p.mu.Lock()
	defer a.p.mu.Unlock()
	shown := a.p.shown
	if shown {
		fmt.Fprint(a.p.w, "\r\x1b[K")
	}
	n, err := a.w.Write(b)
	if shown && len(b) > 0 && b[len(b)-1] == '\n' {
		a.p.draw(a.p.text)
	}
	return n, err
}

// draw replaces the line with s; p.mu is held.
func (p *progress) draw(s string) {
	fmt.Fprintf(p.w, "\r\x1b[K%s", s)
	p.shown, p.text = true, s
}
