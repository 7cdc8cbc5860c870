package watch

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/meshapi"
	"github.com/meshtrust/meshtrust/trust"

	"github.com/meshtrust/meshtrust/internal/retry"
)

func readAll(t testing.TB, in string) ([]sseEvent, error) {
	t.Helper()
	r := newSSEReader(strings.NewReader(in), nil)
	var out []sseEvent
	for {
		ev, err := r.next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, err
		}
		out = append(out, ev)
	}
}

func TestSSEReader(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   string
		want []sseEvent
	}{
		{"contract example", "id: 42\nevent: revocation\ndata: {\"seq\":42}\n\n",
			[]sseEvent{{ID: "42", Type: "revocation", Data: `{"seq":42}`}}},
		{"CRLF and CR line ends", "id: 1\r\nevent: revocation\r\ndata: a\r\n\r\nid: 2\rdata: b\r\r",
			[]sseEvent{{ID: "1", Type: "revocation", Data: "a"}, {ID: "2", Type: "message", Data: "b"}}},
		{"comments and keep-alives", ": keep-alive\n\n: hello\ndata: x\n\n",
			[]sseEvent{{Type: "message", Data: "x"}}},
		{"multi-line data", "data: a\ndata:b\ndata\n\n",
			[]sseEvent{{Type: "message", Data: "a\nb\n"}}},
		{"id persists, event type does not", "id: 7\nevent: revocation\ndata: 1\n\ndata: 2\n\n",
			[]sseEvent{{ID: "7", Type: "revocation", Data: "1"}, {ID: "7", Type: "message", Data: "2"}}},
		{"no data, no dispatch", "id: 9\nevent: revocation\n\ndata: z\n\n",
			[]sseEvent{{ID: "9", Type: "message", Data: "z"}}},
		{"id with NUL ignored", "id: 3\n\nid: 4\x005\ndata: q\n\n",
			[]sseEvent{{ID: "3", Type: "message", Data: "q"}}},
		{"BOM", "\uFEFFdata: b\n\n", []sseEvent{{Type: "message", Data: "b"}}},
		{"incomplete last event dropped", "data: a\n\ndata: b\n", []sseEvent{{Type: "message", Data: "a"}}},
		{"unknown fields ignored", "foo: bar\nretry: 100\ndata: c\n\n", []sseEvent{{Type: "message", Data: "c"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readAll(t, tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestSSEReaderLimits(t *testing.T) {
	t.Parallel()
	if _, err := readAll(t, "data: "+strings.Repeat("x", maxLine+1)+"\n\n"); !errors.Is(err, errLineTooLong) {
		t.Errorf("long line: %v", err)
	}
	line := "data: " + strings.Repeat("x", maxLine-10) + "\n"
	if _, err := readAll(t, strings.Repeat(line, maxData/maxLine+2)+"\n"); !errors.Is(err, errDataTooLong) {
		t.Errorf("large event: %v", err)
	}
}

// TestSSEReaderCRAtChunkEnd shows that an event ending in CR is dispatched
// without waiting for the next byte.
func TestSSEReaderCRAtChunkEnd(t *testing.T) {
	t.Parallel()
	pr, pw := io.Pipe()
	r := newSSEReader(pr, nil)
	go pw.Write([]byte("data: a\r\r"))
	got := make(chan sseEvent, 1)
	go func() {
		ev, _ := r.next()
		got <- ev
	}()
	select {
	case ev := <-got:
		if ev.Data != "a" {
			t.Errorf("got %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the event waited for more input")
	}
	pw.Close()
}

func FuzzSSEReader(f *testing.F) {
	f.Add("id: 42\nevent: revocation\ndata: {\"seq\":42,\"serial\":\"9f\"}\n\n")
	f.Add(": keep-alive\r\n\r\ndata: a\rdata: b\r\r")
	f.Add("\uFEFFid: 1\x00\nretry: 5\ndata\n\n")
	f.Fuzz(func(t *testing.T, in string) {
		w := &Watcher{set: &trust.RevocationSet{}, cfg: Config{Clock: retry.SystemClock()}, log: slog.New(slog.DiscardHandler)}
		events, _ := readAll(t, in)
		for _, ev := range events {
			if strings.Contains(ev.ID, "\x00") {
				t.Fatalf("id with NUL: %q", ev.ID)
			}
			w.apply(ev) // must not panic on any input
		}
		if w.LastEventID() < 0 {
			t.Fatalf("negative resume point %d", w.LastEventID())
		}
	})
}

func TestApply(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	set := &trust.RevocationSet{}
	w := &Watcher{set: set, cfg: Config{Clock: retry.SystemClock()}, log: slog.New(slog.NewTextHandler(&logs, nil))}
	at := time.Date(2026, 11, 21, 22, 40, 0, 0, time.UTC)
	ev := func(id string, v any) sseEvent {
		b, _ := json.Marshal(v)
		return sseEvent{ID: id, Type: "revocation", Data: string(b)}
	}
	// As meshd sends it; the others are what an older or odder server might.
	w.apply(ev("42", meshapi.RevocationEvent{Seq: 42, Serial: "00:9F:A1", IssuerKeyID: "A1B2", CommonName: "opus@ct111", Reason: "keyCompromise", Time: at}))
	w.apply(ev("43", map[string]any{"seq": 43, "entity": "acme", "reason": "entity revoked", "time": "…"}))
	w.apply(ev("44", map[string]any{"seq": 44, "serial": "0x0b", "reason": 4}))
	w.apply(ev("45", map[string]any{"seq": 45, "serial": "not-hex"}))
	w.apply(sseEvent{ID: "46", Type: "revocation", Data: "{broken"})
	w.apply(sseEvent{ID: "99", Type: "heartbeat", Data: "{}"}) // not a revocation: ignored, resume point kept
	w.apply(sseEvent{Type: "revocation", Data: `{"seq":47,"serial":"c"}`})

	if r, ok := set.Serial("", "9fa1"); !ok || r.Reason != "keyCompromise" || !r.At.Equal(at) || r.IssuerKeyID != "a1b2" {
		t.Errorf("serial 9fa1: %+v, %v", r, ok)
	}
	if r, ok := set.Entity("acme"); !ok || r.Reason != "entity revoked" || r.At.IsZero() {
		t.Errorf("entity acme: %+v, %v", r, ok)
	}
	if r, ok := set.Serial("", "b"); !ok || r.Reason != "superseded" {
		t.Errorf("serial b: %+v, %v", r, ok)
	}
	if _, ok := set.Serial("", "c"); !ok {
		t.Error("event without an id not applied")
	}
	if _, ok := set.Serial("", "not-hex"); ok {
		t.Error("the malformed serial was applied")
	}
	if got := w.LastEventID(); got != 47 {
		t.Errorf("resume point %d, want 47 (malformed events passed over, unknown kinds ignored)", got)
	}
	if !strings.Contains(logs.String(), "malformed serial") || !strings.Contains(logs.String(), "not understood") {
		t.Errorf("skipped events not logged:\n%s", logs.String())
	}
}
