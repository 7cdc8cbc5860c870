package console

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// pageRows is how many rows a fleet-sized table (agents, certificates)
// shows at once: ten thousand agents are twenty pages of a few hundred
// KB each, not one page of several MB that the live refresh would fetch
// again on every change.
const pageRows = 500

// maxQuery bounds the filter text read from a request.
const maxQuery = 256

// paging is where a table's page stands: the filter, which rows of how
// many matching are shown, and the links to the pages beside it.
type paging struct {
	// Query is the filter as typed; rows match when one of their names
	// contains it.
	Query string
	// From and To number the rows shown (1-based, inclusive), of Total
	// matching; Page of Pages.
	From, To, Total int
	Page, Pages     int
	// Prev and Next are the neighbouring pages' URLs, "" at an end.
	Prev, Next string
}

// paginate filters rows by the request's ?q= (matched by names, which
// returns the strings of a row the filter looks in) and cuts out the
// page the query parameter param (one per table of a page) asks for: 1
// when absent or out of range.
func paginate[T any](r *http.Request, rows []T, names func(T) []string, param string) ([]T, paging) {
	q := strings.TrimSpace(r.URL.Query().Get("q"))
	if len(q) > maxQuery {
		q = q[:maxQuery]
	}
	if q != "" {
		// Compared: the filter, as typed, as a substring of the names
		// the Backend reported for the row; it selects what is shown
		// and never what anyone may do.
		kept := rows[:0:0]
		for _, row := range rows {
			for _, n := range names(row) {
				if strings.Contains(n, q) {
					kept = append(kept, row)
					break
				}
			}
		}
		rows = kept
	}
	p := paging{Query: q, Total: len(rows), Pages: (len(rows) + pageRows - 1) / pageRows}
	if p.Pages == 0 {
		p.Pages = 1
	}
	p.Page, _ = strconv.Atoi(r.URL.Query().Get(param))
	if p.Page < 1 || p.Page > p.Pages {
		p.Page = 1
	}
	start := (p.Page - 1) * pageRows
	end := min(start+pageRows, len(rows))
	if len(rows) > 0 {
		p.From, p.To = start+1, end
	}
	link := func(page int) string {
		v := url.Values{}
		if q != "" {
			v.Set("q", q)
		}
		if page > 1 {
			v.Set(param, strconv.Itoa(page))
		}
		if len(v) == 0 {
			return r.URL.Path
		}
		return r.URL.Path + "?" + v.Encode()
	}
	if p.Page > 1 {
		p.Prev = link(p.Page - 1)
	}
	if p.Page < p.Pages {
		p.Next = link(p.Page + 1)
	}
	return rows[start:end], p
}
