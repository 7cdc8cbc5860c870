package benchmesh

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Main runs a benchmark program's body and exits with status 1, printing
// "name: error" to stderr, if it fails. run's context ends after limit or
// on SIGINT or SIGTERM, so that a program stopped at run.sh's deadline
// still stops its servers and removes its temporary directory.
func Main(name string, limit time.Duration, run func(context.Context) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, limit)
	err := run(ctx)
	cancel()
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
