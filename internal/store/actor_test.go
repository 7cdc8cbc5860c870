package store

import (
	"context"
	"testing"
)

func TestAttributed(t *testing.T) {
	for _, tc := range []struct{ actor, detail, want string }{
		{"", "reason keyCompromise", "reason keyCompromise"},
		{"uid 0 (admin socket)", "", "by uid 0 (admin socket)"},
		{"admin@external", "serial 1f reason superseded", "serial 1f reason superseded; by admin@external"},
	} {
		ctx := context.Background()
		if tc.actor != "" {
			ctx = WithActor(ctx, tc.actor)
		}
		got := Attributed(ctx, tc.detail)
		if got != tc.want {
			t.Errorf("Attributed(%q, %q) = %q, want %q", tc.actor, tc.detail, got, tc.want)
		}
		if back := AttributedTo(got); back != tc.actor {
			t.Errorf("AttributedTo(%q) = %q, want %q", got, back, tc.actor)
		}
	}
}
