package cli

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// errNoSocket: the kernel's socket tables list no connection between the
// two addresses (it closed meanwhile).
var errNoSocket = errors.New("no such TCP connection in /proc/net")

// loopbackPeerUID returns the uid owning the client end of a loopback TCP
// connection accepted at local from remote, as the kernel lists it in
// /proc/net/tcp or /proc/net/tcp6: the socket whose local address is
// remote and whose remote address is local. Both ends are on this
// machine, in this network namespace, so the kernel knows the owner.
func loopbackPeerUID(local, remote *net.TCPAddr) (uint32, error) {
	want, err := procAddr(remote)
	if err != nil {
		return 0, err
	}
	peer, err := procAddr(local)
	if err != nil {
		return 0, err
	}
	table := "/proc/net/tcp"
	if remote.IP.To4() == nil {
		table = "/proc/net/tcp6"
	}
	f, err := os.Open(table)
	if err != nil {
		return 0, fmt.Errorf("reading the kernel's socket table: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // the header line
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid …
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[1] != want || fields[2] != peer {
			continue
		}
		uid, err := strconv.ParseUint(fields[7], 10, 32)
		if err != nil {
			return 0, fmt.Errorf("%s: uid %q: %w", table, fields[7], err)
		}
		return uint32(uid), nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading %s: %w", table, err)
	}
	return 0, errNoSocket
}

// procAddr writes a as /proc/net/tcp{,6} does: the address as 32-bit
// words in host byte order (little-endian on the machines Go's linux
// ports run on but s390x, ppc64 and mips), each as 8 uppercase hex
// digits, then ':' and the port as 4.
func procAddr(a *net.TCPAddr) (string, error) {
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return "", fmt.Errorf("address %v", a)
	}
	ip = ip.Unmap()
	raw := ip.AsSlice()
	var b strings.Builder
	for i := 0; i < len(raw); i += 4 {
		var w [4]byte
		nativeEndian.PutUint32(w[:], binary.BigEndian.Uint32(raw[i:i+4]))
		b.WriteString(strings.ToUpper(hex.EncodeToString(w[:])))
	}
	fmt.Fprintf(&b, ":%04X", a.Port)
	return b.String(), nil
}

var nativeEndian = binary.NativeEndian
