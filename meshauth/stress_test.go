package meshauth_test

import (
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/meshauth"
	"github.com/meshtrust/meshtrust/trust"
)

// TestStress runs requests with and without session tokens on several
// connections while revocations come and go, the policy is replaced, the
// signing key rotates and connections are closed: run with -race.
func TestStress(t *testing.T) {
	w := newWorld(t)
	s, err := meshauth.OpenSessions(meshauth.SessionsConfig{Dir: filepath.Join(t.TempDir(), "k"), Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	var live meshauth.LivePolicy
	allow := mustPolicy(t, "rules:\n  - name: all\n    who: [\"*\"]\n    http: [\"* /**\"]\n")
	deny := mustPolicy(t, "rules: []")
	live.Set(allow)
	a := newAuth(t, w, meshauth.Config{Authorizer: live.Authorize, Tokens: s})
	srv := serve(t, a, a.Handler(whoami))
	certs := []tlsCert{agentOf(t, w.mesh, "a", "ct1"), agentOf(t, w.mesh, "b", "ct1"), leafOf(t, w.partner, "c", "")}
	tokens := make([]string, len(certs))
	for i := range certs {
		tokens[i] = mintFor(t, s, w, &certs[i])
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range certs {
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := client(srv, &certs[i])
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					req, _ := http.NewRequest("GET", srv.URL+"/x", nil)
					if n%2 == 0 {
						req.Header.Set("Authorization", "Bearer "+tokens[i])
					}
					resp, err := c.Do(req)
					if err != nil {
						continue // a connection CloseWhere closed
					}
					resp.Body.Close()
					switch resp.StatusCode {
					case 200, 401, 403:
					default:
						t.Errorf("status %d", resp.StatusCode)
					}
				}
			}()
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		r := trust.Revoked{Identity: "a@ct1", At: time.Now()}
		w.revs.AddIdentity(r)
		w.revs.AddEntity(trust.Revoked{Entity: "partner-corp", At: time.Now()})
		if i%2 == 0 {
			live.Set(deny)
		} else {
			live.Set(allow)
		}
		a.CloseWhere(func(c *meshauth.Caller) bool { return c.Name == "a@ct1" })
		w.revs.RemoveIdentity("a@ct1")
		w.revs.RemoveEntity("partner-corp")
		if i%10 == 0 {
			if _, err := s.Rotate(); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
}
