package console

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

// liveEvent is the data of one "change" server-sent event.
type liveEvent struct {
	Kind    string    `json:"kind"`
	Subject string    `json:"subject"`
	Detail  string    `json:"detail,omitempty"`
	At      time.Time `json:"at"`
}

// events is GET /console/events: the Backend's changes as server-sent
// events ("change", JSON data), a comment every Heartbeat so proxies keep
// the stream open, and an "expired" event before it ends with its
// session. Streams are capped per session and in all (429 past a cap),
// since each holds a Backend watch.
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	v := sessionOf(r)
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "console: this server cannot stream", http.StatusInternalServerError)
		return
	}
	release, err := c.store.openStream(v.key)
	if err != nil {
		if errors.Is(err, errTooManyStreams) {
			http.Error(w, "too many live streams open: close other console tabs", http.StatusTooManyRequests)
			return
		}
		http.Error(w, "no console session: run meshctl console again", http.StatusUnauthorized)
		return
	}
	defer release()

	ctx := r.Context()
	feed := c.backend.Watch(ctx)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	// retry: how long the browser waits before it reconnects a stream
	// that ended (a restarted meshd); a stream refused with 401 is not
	// retried.
	if _, err := w.Write([]byte("retry: 3000\n\n")); err != nil {
		return
	}
	flusher.Flush()

	tick := time.NewTicker(c.cfg.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-v.done:
			c.endStream(w, flusher)
			return
		case <-tick.C:
			if !c.store.alive(v.key) {
				c.endStream(w, flusher)
				return
			}
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil {
				return
			}
			flusher.Flush()
		case ev, ok := <-feed:
			if !ok {
				return
			}
			data, err := json.Marshal(liveEvent{ev.Kind, ev.Subject, ev.Detail, ev.At})
			if err != nil {
				c.log.Error("console: encoding a live event", "err", err)
				continue
			}
			// JSON holds no raw newline, so data is one SSE line.
			if _, err := w.Write(append(append([]byte("event: change\ndata: "), data...), '\n', '\n')); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

func (c *Console) endStream(w http.ResponseWriter, f http.Flusher) {
	_, _ = w.Write([]byte("event: expired\ndata: {}\n\n"))
	f.Flush()
}
