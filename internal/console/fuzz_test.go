package console_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/meshtrust/meshtrust/internal/console"
)

// FuzzPost sends any form, Origin and Sec-Fetch-Site to every action:
// the backend acts only for a form carrying the session's CSRF token and
// the confirmation of its target, and no input makes meshd's error
// (5xx).
func FuzzPost(f *testing.F) {
	f.Add(uint8(0), "target=opus%40ct111&confirm=opus%40ct111&csrf=", "", "same-origin", true)
	f.Add(uint8(1), "name=a&confirm=a&csrf=", "null", "same-origin", true)
	f.Add(uint8(2), "name=%00&confirm=%00&csrf=", "http://evil", "", true)
	f.Add(uint8(0), "target=x&reason=removeFromCRL&confirm=x&csrf=", "", "", false)
	f.Add(uint8(3), "csrf=", "", "cross-site", true)
	paths := []string{"/console/revoke", "/console/reinstate", "/console/entities/revoke", "/console/logout"}
	f.Fuzz(func(t *testing.T, which uint8, body, origin, site string, withToken bool) {
		be := &fakeBackend{}
		c, err := console.New(console.Config{Backend: be})
		if err != nil {
			t.Fatal(err)
		}
		h := c.Handler()
		serve := func(req *http.Request) *httptest.ResponseRecorder {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			return rec
		}
		l, err := c.MintLogin("alice.mesh")
		if err != nil {
			t.Fatal(err)
		}
		ck := serve(httptest.NewRequest(http.MethodGet, l.Path, nil)).Result().Cookies()[0]
		page := httptest.NewRequest(http.MethodGet, "/console/agents", nil)
		page.AddCookie(ck)
		token := csrfField.FindStringSubmatch(serve(page).Body.String())[1]
		if withToken {
			body += url.QueryEscape(token)
		}
		req := httptest.NewRequest(http.MethodPost, paths[int(which)%len(paths)], strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", origin)
		req.Header.Set("Sec-Fetch-Site", site)
		req.AddCookie(ck)
		rec := serve(req)
		if rec.Code >= 500 {
			t.Fatalf("POST %q = %d", body, rec.Code)
		}
		if calls := be.Calls(); len(calls) > 0 {
			form, err := url.ParseQuery(body)
			if err != nil || form.Get("csrf") != token || form.Get("confirm") == "" {
				t.Fatalf("the backend acted (%v) for %q, Origin %q, Sec-Fetch-Site %q", calls, body, origin, site)
			}
			if calls[0].Actor != "alice.mesh" || calls[0].Target != strings.TrimSpace(form.Get("confirm")) {
				t.Fatalf("the backend acted on %+v for %q", calls[0], body)
			}
		}
	})
}
