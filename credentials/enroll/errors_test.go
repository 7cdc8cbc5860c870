package enroll

import (
	"net/http"
	"testing"
	"time"
)

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	date := time.Date(2026, 11, 21, 22, 40, 0, 0, time.UTC)
	for _, tc := range []struct {
		value string
		want  time.Duration
	}{
		{"12", 12 * time.Second},
		{" 0 ", 0},
		{"-5", 0},
		{"", 0},
		{"soon", 0},
		{date.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{date.Add(-time.Minute).Format(http.TimeFormat), 0},
	} {
		h := http.Header{"Retry-After": {tc.value}, "Date": {date.Format(http.TimeFormat)}}
		if got := retryAfter(h); got != tc.want {
			t.Errorf("Retry-After %q: %s, want %s", tc.value, got, tc.want)
		}
	}
	// An HTTP date without the answer's Date cannot be placed in time.
	if got := retryAfter(http.Header{"Retry-After": {date.Format(http.TimeFormat)}}); got != 0 {
		t.Errorf("date without Date: %s", got)
	}
}

func FuzzRetryAfter(f *testing.F) {
	f.Add("120", "Sat, 21 Nov 2026 22:40:00 GMT")
	f.Add("Sat, 21 Nov 2026 22:42:00 GMT", "Sat, 21 Nov 2026 22:40:00 GMT")
	f.Fuzz(func(t *testing.T, value, date string) {
		if d := retryAfter(http.Header{"Retry-After": {value}, "Date": {date}}); d < 0 {
			t.Fatalf("negative delay %s for %q / %q", d, value, date)
		}
	})
}
