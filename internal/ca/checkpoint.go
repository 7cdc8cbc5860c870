package ca

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/pemfile"
)

// Checkpoint is the CA's signed statement that its audit log had Seq
// entries, the last with hash Hash. Checkpoints anchor the log outside the
// database.
//
// The audit log is a hash chain in the store. store.VerifyAuditChain finds
// an entry edited in place, but someone who can write the database file can
// also cut entries off its end, or change an entry and recompute every hash
// after it, and the chain still verifies. Checkpoints are appended to
// Config.CheckpointsPath, one JSON line each, and never rewritten; since an
// entry's hash commits to every entry before it, VerifyAudit catches both
// attacks: a rewritten entry no longer has the hash a later checkpoint
// vouches for, and a cut log lacks entries a checkpoint vouches for.
//
// The active intermediate signs them. The CA holds that key online anyway,
// and whoever has it can already mint certificates, so trusting it for this
// as well trusts nobody new.
//
// Some tampering cannot be caught from the CA host alone. Entries written
// after the last checkpoint are covered by the chain alone, so cutting them
// off is not detected. Someone who can write the CA directory can delete the
// checkpoints file along with the rows, and someone who also holds the
// intermediate key can sign checkpoints of a forged log. To close those
// gaps, ship the file off the host (or scrape it) and verify against that
// copy with `meshctl ca audit --verify --checkpoints FILE`. Lines are never
// rewritten, so an honest copy is a prefix of the live file.
type Checkpoint struct {
	// Seq is the number of entries the log had; the checkpoint vouches for
	// all of them.
	Seq int64 `json:"seq"`
	// Hash is the Hash of entry Seq.
	Hash string    `json:"hash"`
	Time time.Time `json:"time"`
	// KeyID is the subject key id, in hex, of the intermediate that signed.
	KeyID string `json:"key_id"`
	// Signature covers every other field (see signedBytes).
	Signature []byte `json:"sig"`
}

// checkpointLabel keeps a checkpoint's signature from being taken for
// anything else the intermediate key signs.
const checkpointLabel = "meshtrust audit checkpoint v1"

// maxCheckpointLine bounds a line of the checkpoints file; real lines are
// well under 1 KiB even with an RSA-4096 signature.
const maxCheckpointLine = 64 << 10

// CheckpointsPath is the append-only file of signed audit checkpoints.
func (c Config) CheckpointsPath() string { return filepath.Join(c.Dir, "audit.checkpoints") }

func (c Config) checkpointsLockPath() string { return filepath.Join(c.Dir, ".checkpoints.lock") }

// Checkpoint appends a checkpoint of the audit log's head to
// CheckpointsPath, signed by the active intermediate, unless the last one
// there already covers that head. It reports whether it wrote one. When the
// log has not moved it reads the head and the file's last line, and signs
// nothing. Calls in this process and in others (meshctl, meshd) are
// serialised with a file lock, so lines never interleave and each covers more
// entries than the one before.
//
// Checkpoint trusts the file's last line only to decide whether the head
// moved; VerifyAudit checks every line. It refuses, with an error wrapping
// store.ErrAuditTampered, a head that contradicts that line: a log shorter
// than the line vouches for, or as long but with another hash. After a
// restore of the database from a backup older than the last checkpoint,
// move the file aside (keep it: it vouches for the entries the backup
// lacks), and checkpointing starts again.
func (c *CA) Checkpoint(ctx context.Context) (bool, error) {
	lock, err := lockFile(c.cfg.checkpointsLockPath())
	if err != nil {
		return false, err
	}
	defer lock.unlock()

	// The head is read under the lock, so whoever takes the lock next sees
	// at least this head: the file's sequence numbers only grow.
	head, err := c.store.AuditHead(ctx)
	if err != nil {
		return false, err
	}
	if head.Seq == 0 {
		return false, nil
	}
	path := c.cfg.CheckpointsPath()
	_, statErr := os.Lstat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if created {
		// The file is public (signed hashes of the log), whatever the umask.
		if err := f.Chmod(0o644); err != nil {
			return false, err
		}
	}
	last, endsInNewline, err := lastLine(f)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	// A last line that does not parse is VerifyAudit's to report; a fresh
	// checkpoint after it is still worth having.
	var prev Checkpoint
	if len(last) > 0 && json.Unmarshal(last, &prev) == nil {
		switch {
		case prev.Seq == head.Seq && prev.Hash == head.Hash:
			return false, nil
		case prev.Seq > head.Seq:
			return false, fmt.Errorf("%w: the log ends at entry %d, but the last checkpoint in %s (%s) vouches for %d entries (if the database was restored from a backup, move that file aside and keep it; otherwise run `meshctl ca audit --verify`)",
				store.ErrAuditTampered, head.Seq, path, prev.Time.UTC().Format(time.RFC3339), prev.Seq)
		case prev.Seq == head.Seq:
			return false, fmt.Errorf("%w: entry %d differs from the last checkpoint in %s (run `meshctl ca audit --verify`)", store.ErrAuditTampered, head.Seq, path)
		}
	}
	is := c.signer()
	cp := Checkpoint{Seq: head.Seq, Hash: head.Hash, Time: c.cfg.Now().UTC(), KeyID: is.id}
	if cp.Signature, err = signCheckpoint(c.cfg.Rand, is.key, cp); err != nil {
		return false, err
	}
	line, err := json.Marshal(cp)
	if err != nil {
		return false, err
	}
	line = append(line, '\n')
	if !endsInNewline {
		// A line a crash cut short stays a line of its own.
		line = append([]byte{'\n'}, line...)
	}
	// One write to a file opened O_APPEND: the line lands whole at the end.
	if _, err := f.Write(line); err != nil {
		return false, fmt.Errorf("append to %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return false, fmt.Errorf("append to %s: %w", path, err)
	}
	if created {
		if err := pemfile.SyncDir(c.cfg.Dir); err != nil {
			return false, err
		}
	}
	return true, nil
}

// lastLine returns the last non-empty line of f without its newline, and
// whether f is empty or ends with a newline.
func lastLine(f *os.File) ([]byte, bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	size := fi.Size()
	if size == 0 {
		return nil, true, nil
	}
	var buf []byte
	for off := size; off > 0 && len(buf) <= maxCheckpointLine; {
		n := min(off, 4096)
		off -= n
		b := make([]byte, n, int(n)+len(buf))
		if _, err := f.ReadAt(b, off); err != nil {
			return nil, false, err
		}
		buf = append(b, buf...)
		line := bytes.TrimRight(buf, "\n")
		if i := bytes.LastIndexByte(line, '\n'); i >= 0 || off == 0 {
			return line[i+1:], buf[len(buf)-1] == '\n', nil
		}
	}
	// No checkpoint is this long: hand back what does not parse.
	return buf, buf[len(buf)-1] == '\n', nil
}

// signedBytes is what a checkpoint's signature covers: checkpointLabel and
// every field but the signature, each length-prefixed as in
// store.HashEntry.
func (cp Checkpoint) signedBytes() []byte {
	var b []byte
	field := func(s string) {
		b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
		b = append(b, s...)
	}
	field(checkpointLabel)
	b = binary.BigEndian.AppendUint64(b, uint64(cp.Seq))
	field(cp.Hash)
	field(cp.Time.UTC().Format(time.RFC3339Nano))
	field(cp.KeyID)
	return b
}

// checkpointAlgorithm returns how a key like pub signs checkpoints: the
// algorithm x509.Certificate.CheckSignature verifies, and the hash the
// signer is handed a digest of (0 for Ed25519, which signs the message).
func checkpointAlgorithm(pub crypto.PublicKey) (x509.SignatureAlgorithm, crypto.Hash, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Params().BitSize > 256 {
			return x509.ECDSAWithSHA384, crypto.SHA384, nil
		}
		return x509.ECDSAWithSHA256, crypto.SHA256, nil
	case *rsa.PublicKey:
		return x509.SHA256WithRSA, crypto.SHA256, nil
	case ed25519.PublicKey:
		return x509.PureEd25519, 0, nil
	}
	return 0, 0, fmt.Errorf("no checkpoint signature for a %T key", pub)
}

func signCheckpoint(rand io.Reader, key crypto.Signer, cp Checkpoint) ([]byte, error) {
	_, h, err := checkpointAlgorithm(key.Public())
	if err != nil {
		return nil, err
	}
	msg := cp.signedBytes()
	if h != 0 {
		d := h.New()
		d.Write(msg)
		msg = d.Sum(nil)
	}
	sig, err := key.Sign(rand, msg, h)
	if err != nil {
		return nil, fmt.Errorf("sign audit checkpoint: %w", err)
	}
	return sig, nil
}

// CheckpointSigners returns the certificates of the intermediates that may
// have signed the CA's checkpoints: every one in the keys directory
// (active, prepared, retired or revoked, expired or not; the CA writes
// every intermediate of its state there) that the CA's root signed. The
// root alone vouches for them, so a certificate someone dropped there is
// ignored unless the root signed it. It reads no private key, and changes
// nothing on disk.
func CheckpointSigners(cfg Config) ([]*x509.Certificate, error) {
	cfg = cfg.withDefaults()
	root, err := pemfile.ReadCert(cfg.rootCopyPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no intermediate in %s (run `meshctl ca issue-intermediate`)", ErrNotInitialized, cfg.Dir)
	}
	if err != nil {
		return nil, err
	}
	paths, err := filepath.Glob(filepath.Join(cfg.intKeysDir(), "*.crt"))
	if err != nil {
		return nil, err
	}
	slices.Sort(paths)
	var out []*x509.Certificate
	for _, p := range paths {
		cert, err := pemfile.ReadCert(p)
		if err != nil {
			return nil, fmt.Errorf("intermediate %s: %w", p, err)
		}
		if cert.CheckSignatureFrom(root) != nil {
			continue
		}
		out = append(out, cert)
	}
	return out, nil
}

// AuditLog is what VerifyLog reads of the store.
type AuditLog interface {
	AuditLog(ctx context.Context) ([]store.AuditEntry, error)
}

// VerifyLog verifies the audit log st holds, to its end, against the
// checkpoints file at path, "" for cfg's own (CheckpointsPath), and
// cfg's intermediates (CheckpointSigners), as VerifyAudit does; progress
// is VerifyAudit's. cfg's own file may not exist yet (no checkpoint was
// written): then the chain alone is checked and the report's File is "";
// a path named explicitly must exist.
//
// The checkpoints are read before the log: the log only grows, so every
// checkpoint read vouches for entries the later read holds. Read the
// other way round, a checkpoint written in between would vouch for
// entries past the end of the log read, which reads as a cut. An
// unterminated last line is one being appended right now (a line is one
// write) or one a crash cut short, which the next checkpoint starts a new
// line after: it is not verified yet.
func VerifyLog(ctx context.Context, cfg Config, st AuditLog, path string, progress func(verified, total int)) (AuditReport, error) {
	named := path != ""
	if !named {
		path = cfg.withDefaults().CheckpointsPath()
	}
	var (
		cps     io.Reader
		signers []*x509.Certificate
		file    string
	)
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		data = data[:bytes.LastIndexByte(data, '\n')+1]
		if signers, err = CheckpointSigners(cfg); err != nil {
			return AuditReport{}, err
		}
		cps, file = bytes.NewReader(data), path
	case named || !errors.Is(err, os.ErrNotExist):
		return AuditReport{}, err
	}
	log, err := st.AuditLog(ctx)
	if err != nil {
		return AuditReport{}, fmt.Errorf("read the audit log: %w", err)
	}
	rep, err := VerifyAudit(log, cps, signers, progress)
	rep.File = file
	return rep, err
}

// AuditReport is what VerifyAudit found in a log it accepted.
type AuditReport struct {
	// Entries is the length of the log; Head is its last entry's Hash, ""
	// for an empty log.
	Entries int
	Head    string
	// Checkpoints is the number of checkpoints verified.
	Checkpoints int
	// Newest is the checkpoint that vouches for the most entries, zero
	// when there is none. The entries after Newest.Seq are covered by the
	// hash chain alone.
	Newest Checkpoint
	// File is the checkpoints file VerifyLog read, "" when there was none.
	File string
}

// VerifyAudit checks entries, the whole audit log in Seq order, on its own
// and against checkpoints. The hash chain must be unbroken
// (store.VerifyAuditChain), and every checkpoint must be signed by one of
// signers, vouch for no more entries than the log has (else the log was cut
// short), and match the hash of the entry it names (else the log was
// rewritten). checkpoints holds JSON lines as Checkpoint writes them (a
// live file or a copy shipped off the host); nil checks the chain alone.
// Errors wrap store.ErrAuditTampered and say what does not fit and where.
// progress, when not nil, is told how many of the entries' hashes have
// been verified as the chain check advances.
//
// It cannot see entries cut off after the newest checkpoint, nor a
// checkpoints file deleted together with the rows (see Checkpoint).
func VerifyAudit(entries []store.AuditEntry, checkpoints io.Reader, signers []*x509.Certificate, progress func(verified, total int)) (AuditReport, error) {
	rep := AuditReport{Entries: len(entries)}
	if len(entries) > 0 {
		rep.Head = entries[len(entries)-1].Hash
	}
	var chainProgress func(int)
	if progress != nil {
		chainProgress = func(n int) { progress(n, len(entries)) }
	}
	if err := store.VerifyAuditChainProgress(entries, chainProgress); err != nil {
		return rep, err
	}
	if checkpoints == nil {
		return rep, nil
	}
	byID := make(map[string]*x509.Certificate, len(signers))
	for _, s := range signers {
		byID[keyID(s)] = s
	}
	sc := bufio.NewScanner(checkpoints)
	sc.Buffer(nil, maxCheckpointLine)
	// Every line is read before a mismatch is reported, so the report
	// names the closest bounds: the fewest entries a checkpoint vouches for
	// that the log no longer matches (after the most that it still does),
	// and the most entries one vouches for beyond the end of the log.
	var (
		matched      int64
		changed, cut *lineCheckpoint
	)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		lc := &lineCheckpoint{line: n}
		cp := &lc.Checkpoint
		if err := json.Unmarshal(line, cp); err != nil || cp.Seq < 1 {
			return rep, fmt.Errorf("%w: line %d of the checkpoints is not a checkpoint (it was edited, or a crash cut it short)", store.ErrAuditTampered, n)
		}
		signer := byID[cp.KeyID]
		if signer == nil {
			return rep, fmt.Errorf("%w: %s: %s is not an intermediate of this CA", store.ErrAuditTampered, lc, cp.KeyID)
		}
		alg, _, err := checkpointAlgorithm(signer.PublicKey)
		if err == nil {
			err = signer.CheckSignature(alg, cp.signedBytes(), cp.Signature)
		}
		if err != nil {
			return rep, fmt.Errorf("%w: %s: the signature does not verify, so the line was forged or edited: %v", store.ErrAuditTampered, lc, err)
		}
		switch {
		case cp.Seq > int64(len(entries)):
			if cut == nil || cp.Seq > cut.Seq {
				cut = lc
			}
		case entries[cp.Seq-1].Hash != cp.Hash:
			if changed == nil || cp.Seq < changed.Seq {
				changed = lc
			}
		default:
			matched = max(matched, cp.Seq)
			rep.Checkpoints++
			if cp.Seq >= rep.Newest.Seq {
				rep.Newest = *cp
			}
		}
	}
	if err := sc.Err(); errors.Is(err, bufio.ErrTooLong) {
		return rep, fmt.Errorf("%w: a line of the checkpoints is longer than any checkpoint", store.ErrAuditTampered)
	} else if err != nil {
		return rep, fmt.Errorf("read the checkpoints: %w", err)
	}
	if changed != nil {
		return rep, fmt.Errorf("%w: entry %d does not match the %s: an entry from %d to %d was changed and every hash after it recomputed",
			store.ErrAuditTampered, changed.Seq, changed, matched+1, changed.Seq)
	}
	if cut != nil {
		removed := fmt.Sprintf("entries %d to %d were", len(entries)+1, cut.Seq)
		if cut.Seq == int64(len(entries))+1 {
			removed = fmt.Sprintf("entry %d was", cut.Seq)
		}
		return rep, fmt.Errorf("%w: the log ends at entry %d, but the %s vouches for more: %s removed",
			store.ErrAuditTampered, len(entries), cut, removed)
	}
	return rep, nil
}

// lineCheckpoint is a checkpoint and the line of the file it was read from.
type lineCheckpoint struct {
	Checkpoint
	line int
}

func (lc *lineCheckpoint) String() string {
	return fmt.Sprintf("checkpoint on line %d (entry %d, signed %s by intermediate %s)", lc.line, lc.Seq, lc.Time.UTC().Format(time.RFC3339), lc.KeyID)
}
