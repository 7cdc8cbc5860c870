package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/server"
	"github.com/meshtrust/meshtrust/internal/store/sqlite"
	"github.com/meshtrust/meshtrust/pemfile"
)

// serverNode is the node id of meshd's own certificate in --dev.
const serverNode = "meshd"

// devBootstrap creates, on first start, the mesh CA (root and
// intermediate) and a server certificate for the agent port, and renews
// that certificate when it is due. It points the TLS flags at it unless
// they were given.
func devBootstrap(ctx context.Context, o *options, cfg ca.Config, log *slog.Logger) error {
	if err := ensureDir(cfg.Dir); err != nil {
		return err
	}
	st, err := sqlite.Open(ctx, cfg.StorePath())
	if err != nil {
		return err
	}
	defer st.Close()
	if !fileExists(filepath.Join(cfg.Dir, "intermediate", "state.json")) {
		if !fileExists(cfg.RootCertPath()) {
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
		if _, err := authority.IssueNode(ctx, serverNode, "localhost", "IP:127.0.0.1", "IP:::1"); err != nil {
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

// printDevHint tells a newcomer how to get an agent certificate and send a
// heartbeat.
func printDevHint(w io.Writer, o *options, addr string, mode server.TLSMode) {
	meshctl := fmt.Sprintf("meshctl --root-dir %s --ca-dir %s", o.rootDir, o.caDir)
	if mode == server.TLSOff {
		fmt.Fprintf(w, "\nmeshd is up on http://%s (TLS off). Try:\n  curl -d '{\"agent_id\":\"hello\"}' http://%s/heartbeat\n\n", addr, addr)
		return
	}
	issued := filepath.Join(o.caDir, "issued")
	fmt.Fprintf(w, `
meshd is up on https://%[1]s (TLS %[2]s). Issue an agent certificate and send a heartbeat:
  %[3]s ca issue-agent hello dev1
  curl --cacert %[4]s --cert %[5]s/hello@dev1.crt --key %[5]s/hello@dev1.key \
       -d '{"agent_id":"hello","name":"hello"}' https://%[1]s/heartbeat
Enroll a node with the bootstrap secret (once; mTLS from then on):
  meshctl enroll --server https://%[1]s --secret-file %[8]s --node-id node1 --ca-cert %[4]s --dir ./node1
Admin API: the unix socket %[6]s (meshctl --data-dir %[7]s entity list)

`, addr, mode, meshctl, filepath.Join(o.caDir, "intermediate", "root.crt"), issued, filepath.Join(o.dataDir, "admin.sock"), o.dataDir, filepath.Join(o.dataDir, "bootstrap.secret"))
}
