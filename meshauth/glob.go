package meshauth

import (
	"fmt"
	"strings"
)

// glob is a compiled pattern: '*' matches any run of characters other
// than '/', "**" any run at all; every other character is itself. It is
// matched by simulating its automaton over the subject, so matching costs
// O(len(subject) × len(pattern)) whatever the pattern, allocates nothing,
// and a caller-chosen name cannot make an operator's pattern backtrack
// exponentially.
type glob struct {
	pattern string
	// prefix and suffix are the literal text before the first star and
	// after the last; toks the middle, from the first star to the last.
	prefix, suffix string
	toks           []globTok
	// only is the star of a middle that is one star (the common
	// "search_*", "/files/**"), matched without the automaton.
	only uint8
}

// globTok is one character of the pattern, or a star.
type globTok struct {
	c    byte
	star uint8 // 0: the character c; 1: '*'; 2: "**"
}

// maxGlob bounds a pattern's tokens, so that the automaton's states fit
// the fixed-size set match keeps on the stack.
const maxGlob = 256

type globStates [maxGlob/64 + 1]uint64

func (s *globStates) set(i int)      { s[i>>6] |= 1 << (i & 63) }
func (s *globStates) has(i int) bool { return s[i>>6]&(1<<(i&63)) != 0 }
func (s *globStates) empty() bool {
	for _, w := range s {
		if w != 0 {
			return false
		}
	}
	return true
}

// isGlob reports whether s holds a wildcard.
func isGlob(s string) bool { return strings.Contains(s, "*") }

func compileGlob(s string) (glob, error) {
	if strings.Contains(s, "***") {
		return glob{}, fmt.Errorf("%q: use * (within a path segment) or ** (across segments), not ***", s)
	}
	g := glob{pattern: s}
	for i := 0; i < len(s); i++ {
		switch {
		case strings.HasPrefix(s[i:], "**"):
			g.toks = append(g.toks, globTok{star: 2})
			i++
		case s[i] == '*':
			g.toks = append(g.toks, globTok{star: 1})
		default:
			g.toks = append(g.toks, globTok{c: s[i]})
		}
	}
	if len(g.toks) >= maxGlob {
		return glob{}, fmt.Errorf("%q: a pattern is at most %d characters", s, maxGlob-1)
	}
	first := strings.IndexByte(s, '*')
	last := strings.LastIndexByte(s, '*')
	if first < 0 {
		g.prefix, g.toks = s, nil
		return g, nil
	}
	g.prefix, g.suffix = s[:first], s[last+1:]
	g.toks = g.toks[first : len(g.toks)-len(g.suffix)]
	if len(g.toks) == 1 {
		g.only = g.toks[0].star
	}
	return g, nil
}

// closure adds to st every state reachable by letting stars match
// nothing.
func (g *glob) closure(st *globStates) {
	for i, t := range g.toks {
		if t.star != 0 && st.has(i) {
			st.set(i + 1)
		}
	}
}

// match reports whether s matches the pattern, without allocating.
func (g *glob) match(s string) bool {
	if g.toks == nil {
		return s == g.prefix
	}
	if len(s) < len(g.prefix)+len(g.suffix) || !strings.HasPrefix(s, g.prefix) || !strings.HasSuffix(s, g.suffix) {
		return false
	}
	mid := s[len(g.prefix) : len(s)-len(g.suffix)]
	switch g.only {
	case 1:
		return strings.IndexByte(mid, '/') < 0
	case 2:
		return true
	}
	return g.run(mid)
}

// run simulates the middle's automaton over s.
func (g *glob) run(s string) bool {
	var cur globStates
	cur.set(0)
	g.closure(&cur)
	m := len(g.toks)
	for k := 0; k < len(s); k++ {
		c := s[k]
		var next globStates
		for i := 0; i < m; i++ {
			if !cur.has(i) {
				continue
			}
			switch t := g.toks[i]; t.star {
			case 0:
				if t.c == c {
					next.set(i + 1)
				}
			case 1:
				if c != '/' {
					next.set(i)
				}
			default:
				next.set(i)
			}
		}
		if next.empty() {
			return false
		}
		g.closure(&next)
		cur = next
	}
	return cur.has(m)
}

// nameSet is a compiled set of names: exact ones in a map, patterns in a
// list.
type nameSet struct {
	exact map[string]struct{}
	globs []glob
}

func (n *nameSet) add(s string) error {
	if isGlob(s) {
		g, err := compileGlob(s)
		if err != nil {
			return err
		}
		n.globs = append(n.globs, g)
		return nil
	}
	if n.exact == nil {
		n.exact = make(map[string]struct{})
	}
	n.exact[s] = struct{}{}
	return nil
}

func (n *nameSet) match(s string) bool {
	if _, ok := n.exact[s]; ok {
		return true
	}
	for i := range n.globs {
		if n.globs[i].match(s) {
			return true
		}
	}
	return false
}

func (n *nameSet) empty() bool { return len(n.exact) == 0 && len(n.globs) == 0 }
