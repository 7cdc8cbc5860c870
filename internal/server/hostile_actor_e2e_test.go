package server_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/meshtrust/meshtrust/internal/store"
)

// TestHostileSocketActorOtherUID: the admin socket names a non-root
// caller by the uid the kernel reports for its process (SO_PEERCRED),
// whatever it writes in a body or a header. The caller is curl run as
// uid 65534 on a socket opened to it for the test (meshd makes it 0600).
func TestHostileSocketActorOtherUID(t *testing.T) {
	if runtime.GOOS != "linux" || os.Getuid() != 0 {
		t.Skip("needs root on Linux to run a client as another uid")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("needs curl to send a request as another uid")
	}
	e := newEnv(t, envOptions{mode: "strict"})
	agentCert(t, e.ca.auth, "opus", "ct111")
	sock := e.cfg.AdminSocket
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(sock); d != filepath.Dir(d) && strings.HasPrefix(d, os.TempDir()) && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(curl, "-s", "--max-time", "30", "--unix-socket", sock,
		"-H", "X-Forwarded-User: root", "-H", "X-Remote-User: uid 0", "-H", "Content-Type: application/json",
		"-d", `{"target":"opus@ct111","reason":"superseded","by":"uid 0 (admin socket)","actor":"uid 0 (admin socket)"}`,
		"-w", "\n%{http_code}", "http://meshd/admin/revoke")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "200") {
		t.Fatalf("revoke as uid 65534 over the socket: %v\n%s", err, out)
	}
	log, err := e.ca.st.AuditLog(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var who string
	for _, a := range log {
		if a.Action == "identity.revoke" && a.Identity == "opus@ct111" {
			who = store.AttributedTo(a.Detail)
		}
	}
	if who != "uid 65534 (admin socket)" {
		t.Fatalf("the revocation is attributed to %q, want uid 65534 (admin socket)", who)
	}
}
