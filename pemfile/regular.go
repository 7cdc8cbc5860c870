package pemfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// ErrNotRegular reports a path that names something other than a regular
// file (a FIFO, a socket, a device, a directory): ReadRegular refuses it
// without reading from it.
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge reports a file larger than ReadRegular's bound.
var ErrTooLarge = errors.New("file too large")

// ReadRegular reads the regular file at path, following symlinks (a
// Kubernetes volume links each file into a timestamped directory), and
// refuses anything else without blocking: the file is opened with
// O_NONBLOCK, so opening a FIFO that no one writes returns at once, and
// the opened file itself is checked (fstat, not a stat of the name
// beforehand, which a rename could make stale) before a byte is read. A
// file above max bytes is refused with ErrTooLarge. Errors of the open
// are returned as os.Open gives them, so errors.Is(err, fs.ErrNotExist)
// tells a missing file.
func ReadRegular(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w (%s); want a regular file or a link to one", ErrNotRegular, fileKind(fi.Mode()))
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrTooLarge, max)
	}
	return data, nil
}

// fileKind names the type of a file that is not regular, for an error.
func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	case m.IsDir():
		return "a directory"
	}
	return "mode " + m.String()
}
