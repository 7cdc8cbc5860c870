package ca

import (
	"crypto/rand"
	"testing"
	"time"
)

// TestSerialsGrowWithTime checks newSerial's promise: positive, at most
// 128 bits, ordered by the millisecond they were drawn in (so the store's
// serial index is appended to), and 80 random bits that differ each draw.
func TestSerialsGrowWithTime(t *testing.T) {
	at := time.Date(2026, 12, 1, 15, 0, 0, 0, time.UTC)
	var prevText string
	seen := map[string]bool{}
	for i := range 1000 {
		now := at.Add(time.Duration(i) * time.Millisecond)
		n, err := newSerial(rand.Reader, now)
		if err != nil {
			t.Fatal(err)
		}
		if n.Sign() <= 0 || n.BitLen() > 128 {
			t.Fatalf("serial %x: want positive and at most 128 bits", n)
		}
		if got := n.Rsh(n, 80).Int64(); got != now.UnixMilli() {
			t.Fatalf("serial's top 48 bits are %d, want the millisecond %d", got, now.UnixMilli())
		}
		n2, err := newSerial(rand.Reader, now)
		if err != nil {
			t.Fatal(err)
		}
		text := n2.Text(16)
		if seen[text] {
			t.Fatalf("serial %s drawn twice", text)
		}
		seen[text] = true
		// The store keeps serials as this text; the text must sort as the
		// numbers do for the index to be appended to.
		if len(text) != len(prevText) && prevText != "" || text <= prevText {
			t.Fatalf("serial %s does not sort after %s", text, prevText)
		}
		prevText = text
	}
}
