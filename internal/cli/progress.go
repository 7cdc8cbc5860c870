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

// draw replaces the line with s; p.mu is held.
func (p *progress) draw(s string) {
	fmt.Fprintf(p.w, "\r\x1b[K%s", s)
	p.shown = true
}
