package credentials_test

import (
	"context"
	"log"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/meshtrust/meshtrust/credentials"
	"github.com/meshtrust/meshtrust/credentials/file"
)

// An mTLS server whose certificate and client roots follow the files of
// MCP_MESH_TLS_CERT, MCP_MESH_TLS_KEY and MCP_MESH_TLS_CA: a rotation by
// cert-manager applies to the next connection.
func ExampleServerConfig() {
	ctx := context.Background()
	src, err := file.FromEnv(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	srv := &http.Server{
		Addr:      ":8443",
		TLSConfig: credentials.ServerConfig(src, credentials.AuthorizeIdentity("opus@ct111", "scout@ct111")),
	}
	log.Fatal(srv.ListenAndServeTLS("", "")) // the certificate comes from TLSConfig
}

// A sidecar that hands an agent process its credentials as files on
// tmpfs, and removes them when it is told to stop.
func ExampleMaterialize() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var src credentials.Source // file.New, enroll.Renewer.AgentSource, ...
	files, err := credentials.Materialize(ctx, src, "opus")
	if err != nil {
		log.Fatal(err)
	}
	defer files.Close() // removes the directory, also on a signal (ctx ends)

	agent := exec.CommandContext(ctx, "mcp-agent")
	agent.Env = append(os.Environ(), files.Env()...) // paths only, never PEM
	if err := agent.Start(); err != nil {
		log.Print(err)
		return
	}
	go func() {
		for {
			select {
			case <-files.Rewritten():
				agent.Process.Signal(syscall.SIGHUP) // reload the rotated files
			case <-files.Done():
				return
			}
		}
	}()
	agent.Wait()
}
