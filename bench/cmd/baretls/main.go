// Command baretls is the handshake baseline for meshd: a bare Go HTTPS
// server with the same certificate, crypto/tls verifying the client chain
// against the mesh root (tls.RequireAndVerifyClientCert), that answers
// POST /heartbeat with a small fixed JSON body after reading the request,
// and HEAD /heartbeat/{agent_id} with 200 and no body, as meshd answers
// an agent whose registration is unchanged. It does nothing else, so
// hbload against it measures what the mutual handshakes (-new-conn) and
// HTTP/1.1 alone cost on this machine.
//
// It binds 127.0.0.1 only, serves until SIGINT/SIGTERM or -max-time, and
// prints "addr=<host:port>" once it listens.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address (the host must be 127.0.0.1)")
	certFile := flag.String("cert", "", "server certificate chain (PEM)")
	keyFile := flag.String("key", "", "server key (PEM)")
	clientCA := flag.String("client-ca", "", "PEM roots client certificates must chain to")
	maxTime := flag.Duration("max-time", 10*time.Minute, "stop by itself after this long")
	flag.Parse()
	if err := run(*listen, *certFile, *keyFile, *clientCA, *maxTime); err != nil {
		fmt.Fprintln(os.Stderr, "baretls:", err)
		os.Exit(1)
	}
}

func run(listen, certFile, keyFile, clientCA string, maxTime time.Duration) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return err
	}
	if host != "127.0.0.1" {
		return fmt.Errorf("-listen %s: a benchmark server binds 127.0.0.1 only", listen)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(clientCA)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%s holds no PEM certificate", clientCA)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /heartbeat", heartbeat)
	mux.HandleFunc("HEAD /heartbeat/{agent_id}", head)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			NextProtos:   []string{"h2", "http/1.1"},
		},
		ErrorLog: nil,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, maxTime)
	defer cancel()
	go func() {
		<-ctx.Done()
		shut, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		srv.Shutdown(shut)
	}()
	fmt.Printf("addr=%s\n", ln.Addr())
	if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

var answer = []byte(`{"status":"success","message":"ok"}` + "\n")

func heartbeat(w http.ResponseWriter, r *http.Request) {
	if _, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, 1<<20)); err != nil {
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(answer)
}

// head answers HEAD /heartbeat/{agent_id} as meshd does for an agent that
// has nothing new to POST: 200, no body.
func head(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusOK)
}
