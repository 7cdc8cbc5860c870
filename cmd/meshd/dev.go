package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshtrust/meshtrust/credentials/enroll"
	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/database"
	"github.com/meshtrust/meshtrust/pemfile"
)

// serverNode is the node id of meshd's own certificate in --dev.
const serverNode = "meshd"

// devBootstrap creates, on first start, the mesh CA (root and
// intermediate) and a server certificate for the agent port, and renews
// that certificate when it is due. It points the TLS flags at it unless
// they were given. From then on meshd keeps it renewed while it runs, and
// re-issues it at once when its intermediate is tainted
// (internal/meshd's servingCert).
func devBootstrap(ctx context.Context, o *options, cfg ca.Config, log *slog.Logger) error {
	if err := ensureDir(cfg.Dir); err != nil {
		return err
	}
	st, err := database.Open(ctx, cfg.Dir, o.Database, database.Options{Logger: log, CAExists: pemfile.Exists(cfg.BundlePath())})
	if err != nil {
		return err
	}
	defer st.Close()
	haveCA, err := ca.Materialise(ctx, cfg, st)
	if err != nil {
		return err
	}
	if !haveCA {
		if !pemfile.Exists(cfg.RootCertPath()) {
			if _, err := ca.Init(ctx, cfg, st); err != nil {
				return err
			}
		}
		if _, err := ca.IssueIntermediate(ctx, cfg, st); err != nil {
			return err
		}
		log.Info("created the mesh CA", "root", cfg.RootDir, "ca", cfg.Dir)
	}
	authority, err := ca.Open(ctx, cfg, st)
	if err != nil {
		return err
	}
	c := authority.Config()
	certFile, keyFile := c.IssuedCertPath(serverNode+".mesh"), c.IssuedKeyPath(serverNode+".mesh")
	if due, err := renewalDue(certFile, c.RenewAfter); err != nil || due {
		if _, err := authority.Sign(ctx, ca.NodeRequest(serverNode, "localhost", "IP:127.0.0.1", "IP:::1"), ca.WithGeneratedKey()); err != nil {
			return err
		}
		log.Info("issued meshd's server certificate", "cert", certFile)
	}
	if o.tlsCert == "" && o.tlsKey == "" {
		o.tlsCert, o.tlsKey = certFile, keyFile
	}
	return nil
}

func renewalDue(certFile string, renewAfter time.Duration) (bool, error) {
	cert, err := pemfile.ReadCert(certFile)
	if err != nil {
		return true, err
	}
	return time.Now().After(cert.NotBefore.Add(renewAfter)), nil
}

func ensureDir(dir string) error {
	return os.MkdirAll(dir, 0o700)
}

// printDevHint tells a newcomer how to get an agent certificate, send a
// heartbeat, enroll a node, reach the admin API, ask whether the mesh is
// healthy and open the console. Every line is a command that works pasted
// into a shell in meshd's working directory: meshctl by the path it was
// built to, pointed at this data dir (whose CA it then
// finds), and files by their paths from there.
func printDevHint(w io.Writer, o *options, addr string, mode server.TLSMode) {
	ctl, note := locateMeshctl()
	ctl = shellQuote(ctl)
	admin := ctl + " --data-dir " + shellQuote(o.DataDir)
	// ca commands find the CA in the data dir unless meshd was told
	// otherwise.
	caCtl := admin
	if filepath.Clean(o.CADir) != filepath.Join(o.DataDir, "ca") {
		caCtl += " --ca-dir " + shellQuote(o.CADir)
	}
	if filepath.Clean(o.RootDir) != filepath.Join(o.DataDir, "root") {
		caCtl += " --root-dir " + shellQuote(o.RootDir)
	}
	if note != "" {
		fmt.Fprintf(w, "\n%s\n", note)
	}
	caLine := fmt.Sprintf(`The CA's certificates, and the entities through the admin API (the unix socket %[1]s):
  %[3]s ca list
  %[2]s entity list
Is the mesh healthy, on one screen; and the operator console (it prints a one-time URL to open, and serves until Ctrl-C):
  %[2]s status
  %[2]s console

`, shellQuote(filepath.Join(o.DataDir, "admin.sock")), admin, caCtl)
	if mode == server.TLSOff {
		fmt.Fprintf(w, `
meshd is up on http://%[1]s (TLS off). Send a heartbeat:
  curl -d '{"agent_id":"hello","name":"hello"}' http://%[1]s/heartbeat
`, addr)
		fmt.Fprint(w, caLine)
		return
	}
	rootCert := shellQuote(filepath.Join(o.CADir, "intermediate", "root.crt"))
	c := ca.Config{Dir: o.CADir}
	fmt.Fprintf(w, `
meshd is up on https://%[1]s (TLS %[2]s). Issue an agent certificate and send a heartbeat:
  %[3]s ca issue-agent hello dev1
  curl --cacert %[4]s --cert %[5]s --key %[6]s \
       -d '{"agent_id":"hello","name":"hello"}' https://%[1]s/heartbeat
`, addr, mode, caCtl, rootCert, shellQuote(c.IssuedCertPath("hello@dev1")), shellQuote(c.IssuedKeyPath("hello@dev1")))
	node := shellQuote(filepath.Join(o.DataDir, "node1"))
	switch secret := devSecretFile(o); {
	case enroll.Dir(filepath.Join(o.DataDir, "node1")).HasNode():
		fmt.Fprintf(w, "Node node1 is enrolled in %[1]s; renew it and its agents over mTLS:\n  %[2]s renew --server https://%[3]s --dir %[1]s --force\n", node, ctl, addr)
	case secret != "":
		fmt.Fprintf(w, `Enroll a node with the bootstrap secret (once; mTLS from then on), and mint an agent certificate as that node:
  %[1]s enroll --server https://%[2]s --secret-file %[3]s --node-id node1 --ca-cert %[4]s --dir %[5]s
  %[1]s agent-cert opus --dir %[5]s
`, ctl, addr, shellQuote(secret), rootCert, node)
	}
	fmt.Fprint(w, caLine)
}

// locateMeshctl finds the meshctl to print: the one built beside this
// meshd (`make run` builds both into ./bin), else one on the PATH. Without
// either, it names where `go build -o bin/ ./cmd/...` puts it and returns a
// note saying to run that first.
func locateMeshctl() (cmd, note string) {
	exe, err := os.Executable()
	if err == nil {
		wd, _ := os.Getwd()
		if p, ok := siblingMeshctl(exe, wd); ok {
			return p, ""
		}
	}
	if _, err := exec.LookPath("meshctl"); err == nil {
		return "meshctl", ""
	}
	return "./bin/meshctl", "meshctl is not built yet: run `go build -o bin/ ./cmd/...` in the repository (`make run` does) before the commands below."
}

// siblingMeshctl is the meshctl executable in the directory of exe, as a
// path from wd when it is under wd ("./bin/meshctl"), else absolute.
func siblingMeshctl(exe, wd string) (string, bool) {
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {
		exe = resolved
	}
	p := filepath.Join(filepath.Dir(exe), "meshctl")
	fi, err := os.Stat(p)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return "", false
	}
	if wd != "" {
		if resolved, err := filepath.EvalSymlinks(wd); err == nil {
			wd = resolved
		}
		if rel, err := filepath.Rel(wd, p); err == nil && filepath.IsLocal(rel) {
			return "./" + rel, true
		}
	}
	return p, true
}

// devSecretFile is the file holding the bootstrap secret meshd uses, for
// `meshctl enroll --secret-file`; "" when the secret comes from the
// environment only.
func devSecretFile(o *options) string {
	for _, p := range []string{o.secretFile, o.meshSecretFile, filepath.Join(o.DataDir, "bootstrap.secret"), filepath.Join(o.DataDir, "mesh.secret")} {
		if p != "" && pemfile.Exists(p) {
			return p
		}
	}
	return ""
}

// shellQuote quotes s for a POSIX shell when it holds anything but
// characters that never need it.
func shellQuote(s string) string {
	safe := func(r rune) bool {
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./_-", r)
	}
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool { return !safe(r) }) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
