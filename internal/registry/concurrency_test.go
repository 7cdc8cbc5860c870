package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestDeleteRacesHeartbeat deletes an agent over and over while its own
// heartbeats, each with a new description, keep registering it again. Run
// under -race: dropping an entry reads its registration, which a heartbeat
// that looked the entry up before the drop may be writing.
func TestDeleteRacesHeartbeat(t *testing.T) {
	ctx := context.Background()
	r := newRegistry(t, newMemStore(), &clock{t: time.Unix(1_800_000_000, 0)})
	p := peer(t, "opus@ct111", "")
	errs := make(chan error, 3)
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			for i := range 2000 {
				reg, payload, err := ParseRegistration(fmt.Appendf(nil, `{"agent_id":"opus","description":"%d-%d","tools":[{"function_name":"f","capability":"c"}]}`, g, i))
				if err == nil {
					_, err = r.Heartbeat(ctx, p, reg, payload)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 2000 {
			if err := r.Delete(ctx, p, "opus"); err != nil && !errors.Is(err, ErrUnknown) {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
