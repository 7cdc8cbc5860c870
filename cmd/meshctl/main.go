// Command meshctl operates a meshtrust mesh: its CA, registry and entities.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshtrust/meshtrust/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
