//go:build !linux

package cli

import (
	"errors"
	"net"
)

var errNoSocket = errors.New("the peer's uid of a TCP connection is known on Linux only")

// loopbackPeerUID is known on Linux only (/proc/net/tcp): elsewhere the
// console proxy cannot tell its local callers apart.
func loopbackPeerUID(_, _ *net.TCPAddr) (uint32, error) { return 0, errNoSocket }
