package server

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseEnrollRequest: any /enroll body is refused with a reason or
// gives a valid node id and a CSR whose signature verifies; never a panic.
func FuzzParseEnrollRequest(f *testing.F) {
	f.Add(`{"node_id":"ct111","csr":"-----BEGIN CERTIFICATE REQUEST-----\nMIH\n-----END CERTIFICATE REQUEST-----\n"}`)
	f.Add(`{"node_id":"../x","csr":""}`)
	f.Add(`{"node_id":"ct111"`)
	f.Add(`[]`)
	f.Add(strings.Repeat("{", 1<<12))
	f.Fuzz(func(t *testing.T, body string) {
		_, id, csr, bad := parseEnrollRequest(strings.NewReader(body))
		if bad != nil {
			if bad.reason == "" || bad.msg == "" {
				t.Fatalf("refusal without reason or message: %+v", bad)
			}
			return
		}
		if id.IsZero() || csr == nil || csr.CheckSignature() != nil {
			t.Fatalf("accepted %q with id %v, csr %v", body, id, csr)
		}
	})
}

// FuzzResumePoint: a stream's resume point is a non-negative number or a
// refusal, whatever Last-Event-ID or ?after= holds.
func FuzzResumePoint(f *testing.F) {
	for _, s := range []string{"", "0", "42", "-1", "9223372036854775808", "x", " 1", "1e3"} {
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, header, query string) {
		r, err := http.NewRequest("GET", "https://meshd/revocations/watch?after="+urlEscape(query), nil)
		if err != nil {
			return
		}
		r.Header.Set("Last-Event-ID", header)
		n, err := resumePoint(r)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("resume point %d from %q / %q", n, header, query)
		}
		v := query
		if v == "" {
			v = r.Header.Get("Last-Event-ID")
		}
		if v != "" && strconv.FormatInt(n, 10) != strings.TrimLeft(v, "+0") && n != 0 {
			t.Fatalf("resume point %d does not read %q", n, v)
		}
	})
}

func urlEscape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
			b.WriteByte(c)
		} else {
			b.WriteString("%" + strconv.FormatUint(uint64(c)>>4, 16) + strconv.FormatUint(uint64(c)&15, 16))
		}
	}
	return b.String()
}
