package main

import (
	"strings"
	"testing"
)

// TestGCPercent: --gc-percent, then MESHD_GC_PERCENT, then GOGC (left to
// the runtime), then the default; a target below 1 or not a number is
// refused with what to give instead.
func TestGCPercent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flag    int
		set     bool
		env     map[string]string
		want    int
		wantErr string
	}{
		{name: "default", flag: defaultGCPercent, want: defaultGCPercent},
		{name: "flag", flag: 50, set: true, want: 50},
		{name: "flag over env and GOGC", flag: 40, set: true, env: map[string]string{"MESHD_GC_PERCENT": "60", "GOGC": "80"}, want: 40},
		{name: "env", flag: defaultGCPercent, env: map[string]string{"MESHD_GC_PERCENT": "60"}, want: 60},
		{name: "env over GOGC", flag: defaultGCPercent, env: map[string]string{"MESHD_GC_PERCENT": "60", "GOGC": "off"}, want: 60},
		{name: "GOGC left to the runtime", flag: defaultGCPercent, env: map[string]string{"GOGC": "off"}, want: 0},
		{name: "flag zero", flag: 0, set: true, wantErr: "--gc-percent 0"},
		{name: "flag negative", flag: -1, set: true, wantErr: "want a positive percentage"},
		{name: "env not a number", flag: defaultGCPercent, env: map[string]string{"MESHD_GC_PERCENT": "off"}, wantErr: `MESHD_GC_PERCENT="off"`},
		{name: "env zero", flag: defaultGCPercent, env: map[string]string{"MESHD_GC_PERCENT": "0"}, wantErr: "want a positive percentage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := gcPercent(tc.flag, tc.set, func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("gcPercent = %d, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("gcPercent = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}
