package console

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// pageSet holds one parsed template per page, each the layout with its
// own "content".
type pageSet struct {
	pages map[string]*template.Template
}

var funcs = template.FuncMap{
	"ts": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"tsp": func(t *time.Time) string {
		if t == nil || t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"nav":   func() any { return navItems },
	"deref": func(t *time.Time) time.Time { return *t },
	"rel":   relative,
	"day": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02")
	},
	"short": short,
	"statusClass": func(s string) string {
		switch s {
		case "healthy", "active", "verified":
			return "ok"
		case "unhealthy", "degraded", "prepared", "stale":
			return "warn"
		case "evicted", "revoked", "retired", "tainted", "failed":
			return "bad"
		}
		return "other"
	},
}

// relative says how far t is from now, coarsely ("in 3d", "5m ago").
func relative(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := t.Sub(now)
	suffix, prefix := "", "in "
	if d < 0 {
		d, suffix, prefix = -d, " ago", ""
	}
	var s string
	switch {
	case d < time.Minute:
		s = strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		s = strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		s = strconv.Itoa(int(d/time.Hour)) + "h"
	default:
		s = strconv.Itoa(int(d/(24*time.Hour))) + "d"
	}
	return prefix + s + suffix
}

// short cuts a long hex string for a table cell (the title keeps it whole).
func short(s string) string {
	if len(s) <= 16 {
		return s
	}
	return s[:16] + "…"
}

func parsePages() (*pageSet, error) {
	// The layout and the partials every page may use (pager.html: the
	// filter and the page links of the fleet-sized tables).
	layout, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/pager.html")
	if err != nil {
		return nil, fmt.Errorf("console: parsing the layout: %w", err)
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("console: listing the templates: %w", err)
	}
	ps := &pageSet{pages: make(map[string]*template.Template)}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" || base == "pager" {
			continue
		}
		t, err := template.Must(layout.Clone()).ParseFS(templateFS, n)
		if err != nil {
			return nil, fmt.Errorf("console: parsing %s: %w", n, err)
		}
		ps.pages[base] = t
	}
	return ps, nil
}

// view is what every page's template is given.
type view struct {
	Title string
	// Nav is the path of the page's menu entry, for the menu's marker.
	Nav string
	// Actor and CSRF are the session's; empty on a page without one.
	Actor, CSRF string
	Now         time.Time
	Data        any
}

// navItems is the menu, in order.
var navItems = []struct{ Path, Label string }{
	{pathAgents, "Agents"},
	{pathNodes, "Nodes"},
	{pathCertificates, "Certificates"},
	{pathRevocations, "Revocations"},
	{pathEntities, "Entities & trust"},
	{pathAudit, "Audit"},
	{pathIntermediates, "Intermediates"},
	{pathPolicy, "Policy"},
}

// render writes page name with data, status code; a template failure
// (a bug) is logged and answered 500 before anything was written.
func (c *Console) render(w http.ResponseWriter, r *http.Request, code int, name, title, nav string, data any) {
	t, ok := c.pages.pages[name]
	if !ok {
		c.log.Error("console: no template", "name", name)
		http.Error(w, "console: internal error", http.StatusInternalServerError)
		return
	}
	s := sessionOf(r)
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", view{Title: title, Nav: nav, Actor: s.Actor, CSRF: s.CSRF, Now: c.now(), Data: data}); err != nil {
		c.log.Error("console: rendering a page", "page", name, "err", err)
		http.Error(w, "console: internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

type message struct{ Heading, Text string }

func (c *Console) errorPage(w http.ResponseWriter, r *http.Request, code int, heading, text string) {
	c.render(w, r, code, "message", heading, "", message{heading, text})
}

// staticHandler serves the embedded script and style sheet by exact
// name (no directory listing, no other file).
func staticHandler() http.Handler {
	files := map[string]struct {
		body  []byte
		ctype string
	}{}
	for name, ctype := range map[string]string{"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"} {
		b, err := staticFS.ReadFile("static/" + name)
		if err != nil {
			panic(err) // the embedded tree is fixed at build time
		}
		files[name] = struct {
			body  []byte
			ctype string
		}{b, ctype}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Compared: the path after /console/static/ exactly, with the
		// two embedded names.
		f, ok := files[strings.TrimPrefix(r.URL.Path, pathStatic)]
		if !ok {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", f.ctype)
		w.Header().Set("Content-Length", strconv.Itoa(len(f.body)))
		if r.Method != http.MethodHead {
			_, _ = w.Write(f.body)
		}
	})
}

// agentsView splits the agents: those not evicted (the live table) and
// those evicted, so an evicted agent leaves the live table.
type agentsView struct {
	// Live and Evicted are this page's rows of each table; LiveCount
	// and EvictedCount how many there are in all.
	Live, Evicted           []Agent
	LiveCount, EvictedCount int
	Unauth                  int
	Filter                  filterView
	// EvictedPaging pages the evicted agents with the same filter.
	EvictedPaging paging
}

// filterView is what the "filter" template is given.
type filterView struct {
	Path, Placeholder string
	Paging            paging
}

// agentNames are the names the agents' filter looks in.
func agentNames(a Agent) []string {
	return []string{a.ID, a.Owner, a.Node, a.Entity, a.Source, a.Status}
}

func (c *Console) agentsPage(w http.ResponseWriter, r *http.Request) {
	agents, err := c.backend.Agents(r.Context())
	if err != nil {
		c.backendError(w, r, "list the agents", err)
		return
	}
	var v agentsView
	var live, evicted []Agent
	for _, a := range agents {
		// Compared: the status exactly as the Backend reports it, the
		// registry's "evicted"; the Backend alone vouches for it.
		if a.Status == "evicted" {
			evicted = append(evicted, a)
			continue
		}
		if a.Unauthenticated {
			v.Unauth++
		}
		live = append(live, a)
	}
	v.LiveCount, v.EvictedCount = len(live), len(evicted)
	v.Live, v.Filter.Paging = paginate(r, live, agentNames, "page")
	v.Evicted, v.EvictedPaging = paginate(r, evicted, agentNames, "evicted_page")
	v.Filter.Path, v.Filter.Placeholder = pathAgents, "agent, owner, node, entity, source"
	c.render(w, r, http.StatusOK, "agents", "Agents", pathAgents, v)
}

type nodeRow struct {
	Name          string
	Agents        []Agent
	Live, Evicted int
}

func (c *Console) nodesPage(w http.ResponseWriter, r *http.Request) {
	agents, err := c.backend.Agents(r.Context())
	if err != nil {
		c.backendError(w, r, "list the agents", err)
		return
	}
	byNode := make(map[string]*nodeRow)
	var rows []*nodeRow
	for _, a := range agents {
		n := byNode[a.Node]
		if n == nil {
			n = &nodeRow{Name: a.Node}
			byNode[a.Node] = n
			rows = append(rows, n)
		}
		n.Agents = append(n.Agents, a)
		if a.Status == "evicted" {
			n.Evicted++
		} else {
			n.Live++
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	c.render(w, r, http.StatusOK, "nodes", "Nodes", pathNodes, rows)
}

type certsView struct {
	// Certs is this page's rows; Count and Due are of all of them.
	Certs      []Certificate
	Count, Due int
	Filter     filterView
}

func (c *Console) certificatesPage(w http.ResponseWriter, r *http.Request) {
	certs, err := c.backend.Certificates(r.Context())
	if err != nil {
		c.backendError(w, r, "list the certificates", err)
		return
	}
	sort.SliceStable(certs, func(i, j int) bool { return certs[i].NotAfter.Before(certs[j].NotAfter) })
	v := certsView{Count: len(certs)}
	for _, ct := range certs {
		if ct.Due {
			v.Due++
		}
	}
	v.Certs, v.Filter.Paging = paginate(r, certs, func(ct Certificate) []string { return []string{ct.Serial, ct.CommonName, ct.Kind, ct.IssuerKeyID} }, "page")
	v.Filter.Path, v.Filter.Placeholder = pathCertificates, "serial, name, kind, issuer key"
	c.render(w, r, http.StatusOK, "certificates", "Certificates", pathCertificates, v)
}

type revocationsView struct {
	Certs      []Revocation
	Identities []IdentityRevocation
	Reasons    []string
}

func (c *Console) revocationsPage(w http.ResponseWriter, r *http.Request) {
	certs, ids, err := c.backend.Revocations(r.Context())
	if err != nil {
		c.backendError(w, r, "list the revocations", err)
		return
	}
	c.render(w, r, http.StatusOK, "revocations", "Revocations", pathRevocations, revocationsView{certs, ids, revokeReasons})
}

type entitiesView struct {
	Entities any
	Sources  []TrustSource
}

func (c *Console) entitiesPage(w http.ResponseWriter, r *http.Request) {
	ents, err := c.backend.Entities(r.Context())
	if err != nil {
		c.backendError(w, r, "list the entities", err)
		return
	}
	srcs, err := c.backend.TrustSources(r.Context())
	if err != nil {
		c.backendError(w, r, "list the trust sources", err)
		return
	}
	c.render(w, r, http.StatusOK, "entities", "Entities & trust sources", pathEntities, entitiesView{ents, srcs})
}

// auditLimit is how many audit entries the page shows by default, and
// maxAuditLimit the most ?n= may ask for.
const (
	auditLimit    = 200
	maxAuditLimit = 2000
)

func (c *Console) auditPage(w http.ResponseWriter, r *http.Request) {
	limit := auditLimit
	if s := r.URL.Query().Get("n"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxAuditLimit {
			c.errorPage(w, r, http.StatusBadRequest, "Bad request", fmt.Sprintf("n is how many audit entries to show: a whole number from 1 to %d.", maxAuditLimit))
			return
		}
		limit = n
	}
	log, err := c.backend.Audit(r.Context(), limit)
	if err != nil {
		c.backendError(w, r, "read the audit log", err)
		return
	}
	c.render(w, r, http.StatusOK, "audit", "Audit log", pathAudit, log)
}

func (c *Console) intermediatesPage(w http.ResponseWriter, r *http.Request) {
	ints, err := c.backend.Intermediates(r.Context())
	if err != nil {
		c.backendError(w, r, "list the intermediates", err)
		return
	}
	c.render(w, r, http.StatusOK, "intermediates", "Intermediates", pathIntermediates, ints)
}
