package console_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/clocktest"
	"github.com/meshtrust/meshtrust/internal/console"
)

// TestSessionStoreStress runs, under -race, logins minted, redeemed
// twice at once, used, streamed and logged out, while the clock moves and the caps
// drop the oldest: each token opens at most one session, a session
// answers only while it lives, and the store never holds more than its
// caps.
func TestSessionStoreStress(t *testing.T) {
	clock := clocktest.New(t0)
	const maxLogins, maxSessions = 20, 10
	c, err := console.New(console.Config{Backend: &fakeBackend{}, Now: clock.Now, MaxLogins: maxLogins, MaxSessions: maxSessions, IdleTimeout: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	handler := c.Handler()
	serve := func(method, path string, ck *http.Cookie) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, nil)
		if ck != nil {
			req.AddCookie(ck)
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		return rec
	}

	const workers, rounds = 8, 40
	var opened, doubled atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan string, workers*rounds)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				if i%2 == 1 {
					// The clock moves under the other workers' logins:
					// tokens and idle sessions expire among them.
					clock.Advance(10 * time.Second)
				}
				l, err := c.MintLogin("worker")
				if err != nil {
					errs <- err.Error()
					return
				}
				// Two tabs redeem the same token at once.
				var got [2]*httptest.ResponseRecorder
				var pair sync.WaitGroup
				for k := range 2 {
					pair.Add(1)
					go func() { defer pair.Done(); got[k] = serve(http.MethodGet, l.Path, nil) }()
				}
				pair.Wait()
				var ck *http.Cookie
				wins := 0
				for _, rec := range got {
					switch rec.Code {
					case http.StatusSeeOther:
						wins++
						ck = rec.Result().Cookies()[0]
					case http.StatusUnauthorized:
					default:
						errs <- "login answered " + rec.Result().Status
					}
				}
				if wins > 1 {
					doubled.Add(1)
				}
				if ck == nil {
					continue // dropped past the cap or expired meanwhile
				}
				opened.Add(1)
				if code := serve(http.MethodGet, "/console/agents", ck).Code; code != http.StatusOK && code != http.StatusUnauthorized {
					errs <- "a page answered " + http.StatusText(code)
				}
				if i%2 == 0 {
					// A live stream opens and ends (the tab closed) while
					// others log in, out and expire.
					ctx, cancel := context.WithCancel(context.Background())
					req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/console/events", nil)
					req.AddCookie(ck)
					done := make(chan int)
					go func() {
						rec := httptest.NewRecorder()
						handler.ServeHTTP(rec, req)
						done <- rec.Code
					}()
					cancel()
					if code := <-done; code != http.StatusOK && code != http.StatusUnauthorized && code != http.StatusTooManyRequests {
						errs <- "a stream answered " + http.StatusText(code)
					}
				}
				if (w+i)%3 == 0 {
					// The session of a logout answers no more, at once.
					rec := serve(http.MethodGet, "/console/", ck)
					if rec.Code == http.StatusOK {
						form := "csrf=" + csrfField.FindStringSubmatch(rec.Body.String())[1]
						req := httptest.NewRequest(http.MethodPost, "/console/logout", strings.NewReader(form))
						req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
						req.AddCookie(ck)
						out := httptest.NewRecorder()
						handler.ServeHTTP(out, req)
						if out.Code != http.StatusOK && out.Code != http.StatusUnauthorized {
							errs <- "logout answered " + out.Result().Status
						}
						if code := serve(http.MethodGet, "/console/", ck).Code; code != http.StatusUnauthorized {
							errs <- "a logged-out session answered " + http.StatusText(code)
						}
					}
				}
				if logins, sessions, _ := c.Counts(); logins > maxLogins || sessions > maxSessions {
					errs <- "the store outgrew its caps"
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if n := doubled.Load(); n != 0 {
		t.Errorf("%d tokens opened two sessions", n)
	}
	if opened.Load() == 0 {
		t.Error("no login succeeded: the test exercised nothing")
	}
	if logins, sessions, streams := c.Counts(); logins > maxLogins || sessions > maxSessions || streams != 0 {
		t.Errorf("held %d logins, %d sessions and %d streams once all ended; caps %d and %d, streams 0", logins, sessions, streams, maxLogins, maxSessions)
	}
}
