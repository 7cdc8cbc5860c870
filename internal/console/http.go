package console

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/meshtrust/meshtrust/meshapi"
)

// cookieName is the session cookie's name.
const cookieName = "meshtrust_console"

// maxForm bounds a POST body: the console's forms are a few short fields.
const maxForm = 16 << 10

type sessionKey struct{}

// sessionOf returns the session withSession found for r.
func sessionOf(r *http.Request) sessionView {
	v, _ := r.Context().Value(sessionKey{}).(sessionView)
	return v
}

// refreshHeader marks the page's own background refresh after a live
// event: it must not count as the operator's activity, or an unattended
// tab on a busy mesh would never reach its idle timeout.
const refreshHeader = "X-Console-Refresh"

// withSession runs h only for a request with a live session: without
// one, a page answers the 401 page (html) and a stream a plain 401.
// A page the operator asked for marks the session used; a stream or a
// background refresh does not.
func (c *Console) withSession(h http.HandlerFunc, page bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var id string
		if ck, err := r.Cookie(cookieName); err == nil {
			id = ck.Value
		}
		v, ok := c.store.lookup(id, page && r.Header.Get(refreshHeader) == "")
		if ok && !c.sameCaller(r, v) {
			// Not ended: its own admin may still use it.
			ok = false
		}
		if !ok {
			if !page {
				http.Error(w, "no console session: run meshctl console again", http.StatusUnauthorized)
				return
			}
			c.errorPage(w, r, http.StatusUnauthorized, "No console session",
				"There is no console session in this browser, or it ended (logged out, idle for too long, or too old). Run meshctl console again and open the URL it prints.")
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, v)))
	}
}

// sameCaller reports whether r's connection is authenticated as the admin
// the session (or login) v was minted for. Compared: Config.Caller's name
// for r (vouched for by meshd's admin middleware: the socket peer's uid,
// the admin certificate's mesh identity, the mesh CA alone vouching for
// that) with v.Actor, the string MintLogin was given, exactly.
func (c *Console) sameCaller(r *http.Request, v sessionView) bool {
	if c.cfg.Caller == nil {
		return true
	}
	if got := c.cfg.Caller(r); got != v.Actor {
		c.log.Warn("console: a session used by another admin identity than its own", "session_actor", v.Actor, "caller", got, "path", r.URL.Path)
		return false
	}
	return true
}

// post guards a state-changing request: it must come from the console's
// own pages (not cross-site by Origin or Sec-Fetch-Site) and carry the
// session's CSRF token in its form body; anything else is 403 and never
// reaches h.
func (c *Console) post(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if why := crossSite(r); why != "" {
			c.log.Warn("console: refused a cross-site POST", "path", r.URL.Path, "why", why)
			c.errorPage(w, r, http.StatusForbidden, "Refused", "This request did not come from the console's own page ("+why+"). Nothing was changed.")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
		if err := r.ParseForm(); err != nil {
			c.errorPage(w, r, http.StatusBadRequest, "Bad form", "The form could not be read. Nothing was changed.")
			return
		}
		// The token is read from the body only (r.PostForm), never the
		// URL, which a referrer or a log could carry.
		if !checkCSRF(sessionOf(r), r.PostForm.Get("csrf")) {
			c.log.Warn("console: refused a POST without the session's CSRF token", "path", r.URL.Path)
			c.errorPage(w, r, http.StatusForbidden, "Refused", "This form did not carry the console's CSRF token (a stale page or another site's form). Reload the page and try again. Nothing was changed.")
			return
		}
		h(w, r)
	}
}

// crossSite says why a POST is not the console's own, or "" if nothing
// says so. A browser sends Sec-Fetch-Site on a POST, and Origin; a client
// without them (curl over the admin socket) still needs the CSRF token,
// which only a page of the session holds.
func crossSite(r *http.Request) string {
	// Compared: the browser's Sec-Fetch-Site value, exactly
	// "same-origin"; only the browser vouches for it (a page cannot set
	// it).
	site := r.Header.Get("Sec-Fetch-Site")
	if site != "" && site != "same-origin" {
		return "Sec-Fetch-Site: " + site
	}
	o := r.Header.Get("Origin")
	if o == "" || o == "null" && site == "same-origin" {
		// Under Referrer-Policy: no-referrer a browser sends a form's
		// POST with Origin: null; its Sec-Fetch-Site: same-origin
		// already said where it came from.
		return ""
	}
	// Compared: the Origin's host[:port], as url.Parse reads it, with
	// the request's Host exactly as sent ("127.0.0.1:41234"), without
	// regard to case; only the browser vouches for Origin, and the proxy
	// in front must pass the browser's Host on.
	u, err := url.Parse(o)
	if err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host) || (u.Scheme != "http" && u.Scheme != "https") {
		return "Origin: " + o
	}
	return ""
}

// login exchanges a one-time token for a session cookie and sends the
// browser on to the console without the token in its address bar.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		// A HEAD (a link preview, a prefetch) must not spend the token.
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	token := r.URL.Query().Get("token")
	id, v, err := c.store.redeem(token)
	if err != nil {
		if !errors.Is(err, errNoLogin) {
			c.log.Error("console: login failed", "err", err)
			c.errorPage(w, r, http.StatusInternalServerError, "Login failed", "meshd could not open a session; its log says why.")
			return
		}
		c.errorPage(w, r, http.StatusUnauthorized, "This login URL is not valid",
			"A console login URL works once, for a short while after meshctl console printed it. This one was used already, expired, or is unknown. Run meshctl console again for a new one.")
		return
	}
	if !c.sameCaller(r, v) {
		c.store.end(v.key)
		c.errorPage(w, r, http.StatusUnauthorized, "This login URL is not valid",
			"A console login URL works only for the admin meshctl console authenticated as. Run meshctl console again for a new one.")
		return
	}
	c.log.Info("console: session opened", "actor", v.Actor)
	http.SetCookie(w, &http.Cookie{
		Name:     cookieName,
		Value:    id,
		Path:     meshapi.PathConsole,
		HttpOnly: true,
		SameSite: http.SameSiteStrictMode,
		// Not Secure: the browser reaches the console through meshctl
		// console's loopback proxy over plain HTTP, where a Secure
		// cookie would never be sent back. The cookie lives no longer
		// than the session's absolute lifetime.
		MaxAge: int(c.cfg.SessionLifetime.Seconds()),
	})
	http.Redirect(w, r, meshapi.PathConsole, http.StatusSeeOther)
}

// logout ends the session and its live streams.
func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	v := sessionOf(r)
	c.store.end(v.key)
	c.log.Info("console: session closed", "actor", v.Actor)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: meshapi.PathConsole, HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	c.errorPage(w, r, http.StatusOK, "Logged out", "The console session ended. Run meshctl console for a new one.")
}

func (c *Console) notFound(w http.ResponseWriter, r *http.Request) {
	c.errorPage(w, r, http.StatusNotFound, "Not found", "The console has no page at this address.")
}

// backendError answers a Backend failure: the operator's own (ErrInput)
// as is, 400; meshd's logged and shown generically, 500.
func (c *Console) backendError(w http.ResponseWriter, r *http.Request, what string, err error) {
	if errors.Is(err, ErrInput) {
		c.errorPage(w, r, http.StatusBadRequest, "Not done", err.Error())
		return
	}
	if errors.Is(err, context.Canceled) {
		return // the browser went away
	}
	c.log.Error("console: "+what, "err", err)
	c.errorPage(w, r, http.StatusInternalServerError, "meshd failed", "meshd could not "+what+"; its log says why. Nothing more is known here.")
}
