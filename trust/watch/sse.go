package watch

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"time"
)

// maxLine bounds one line of the event stream, and so the memory a
// misbehaving server can make the watcher hold.
const maxLine = 64 << 10

// maxData bounds the data of one event.
const maxData = 1 << 20

var (
	errLineTooLong = errors.New("event stream line too long")
	errDataTooLong = errors.New("event stream event too large")
)

// sseEvent is one dispatched server-sent event.
type sseEvent struct {
	// ID is the stream's last event ID when the event was dispatched.
	ID string
	// Type is the event field; "message" when there was none.
	Type string
	// Data is the event's data lines joined by "\n".
	Data string
}

// sseReader parses a text/event-stream as the WHATWG HTML standard's
// "event stream interpretation" says: lines end in CRLF, LF or CR; a
// blank line dispatches; lines starting with ':' are comments; one space
// after a field's colon is dropped; an id with NUL is ignored.
type sseReader struct {
	r *bufio.Reader
	// onLine, if not nil, runs for every line read, comments included,
	// so a watchdog can tell an idle stream from a dead one.
	onLine func()
	// retry is the last valid retry field, zero if none.
	retry time.Duration

	lastID  string
	skipLF  bool // the previous line ended in CR; a following LF belongs to it
	started bool // the BOM check has been done
	line    []byte
}

func newSSEReader(r io.Reader, onLine func()) *sseReader {
	return &sseReader{r: bufio.NewReaderSize(r, 4096), onLine: onLine}
}

// readLine returns the next line without its terminator. It returns
// io.EOF at the end of the stream; a last line without a terminator is
// dropped, as the standard says an incomplete event is.
func (s *sseReader) readLine() ([]byte, error) {
	s.line = s.line[:0]
	for {
		b, err := s.r.ReadByte()
		if err != nil {
			return nil, err
		}
		if s.skipLF {
			s.skipLF = false
			if b == '\n' {
				continue
			}
		}
		switch b {
		case '\r':
			s.skipLF = true
			return s.line, nil
		case '\n':
			return s.line, nil
		}
		if len(s.line) >= maxLine {
			return nil, errLineTooLong
		}
		s.line = append(s.line, b)
	}
}

// next returns the next event.
func (s *sseReader) next() (sseEvent, error) {
	var (
		typ  string
		data []byte
		has  bool // a data field was seen
	)
	for {
		line, err := s.readLine()
		if err != nil {
			return sseEvent{}, err
		}
		if !s.started {
			s.started = true
			line = bytes.TrimPrefix(line, []byte("\uFEFF"))
		}
		if s.onLine != nil {
			s.onLine()
		}
		if len(line) == 0 {
			if !has {
				typ = ""
				continue
			}
			if typ == "" {
				typ = "message"
			}
			return sseEvent{ID: s.lastID, Type: typ, Data: string(data)}, nil
		}
		if line[0] == ':' {
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			value = bytes.TrimPrefix(value, []byte(" "))
		}
		switch string(field) {
		case "event":
			typ = string(value)
		case "data":
			if has {
				data = append(data, '\n')
			}
			if len(data)+len(value) > maxData {
				return sseEvent{}, errDataTooLong
			}
			data = append(data, value...)
			has = true
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				s.lastID = string(value)
			}
		case "retry":
			if n, err := strconv.ParseUint(string(value), 10, 31); err == nil && onlyDigits(value) {
				s.retry = time.Duration(n) * time.Millisecond
			}
		}
	}
}

func onlyDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}
