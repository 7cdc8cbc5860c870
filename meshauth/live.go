package meshauth

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// LivePolicy is a policy that can be replaced while requests are being
// decided: each decision reads the current one, and a replacement applies
// to the next decision. The zero value denies everything until Set.
type LivePolicy struct {
	p atomic.Pointer[Policy]
}

// Set makes p the policy in force.
func (l *LivePolicy) Set(p *Policy) { l.p.Store(p) }

// Policy returns the policy in force, nil before the first Set.
func (l *LivePolicy) Policy() *Policy { return l.p.Load() }

// Authorize decides with the policy in force; an Authorizer.
func (l *LivePolicy) Authorize(c *Caller, op *Operation) Decision {
	p := l.p.Load()
	if p == nil {
		return Decision{Rule: DefaultDeny}
	}
	return p.Authorize(c, op)
}

// PolicyFile is a policy file kept in force as it changes: a changed file
// takes effect without a restart, and a file that does not compile is
// refused (Err says where and why) while the last good policy stays in
// force.
//
// mu serializes reloads; the policy itself is read lock-free.
type PolicyFile struct {
	LivePolicy
	path string
	log  *slog.Logger

	mu       sync.Mutex
	err      error
	onReload []func(error)
	watcher  *fsnotify.Watcher
	done     chan struct{}
}

// OpenPolicyFile compiles the policy at path and follows its changes
// until ctx ends or Close. An invalid file at open is an error: there is
// no last good policy to keep.
func OpenPolicyFile(ctx context.Context, path string, log *slog.Logger) (*PolicyFile, error) {
	if log == nil {
		log = slog.Default()
	}
	f := &PolicyFile{path: path, log: log, done: make(chan struct{})}
	p, err := readPolicy(path)
	if err != nil {
		return nil, err
	}
	f.Set(p)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch policy: %w", err)
	}
	// The directory, not the file: editors and ConfigMaps replace files.
	if err := w.Add(filepath.Dir(path)); err != nil {
		w.Close()
		return nil, fmt.Errorf("watch policy: %w", err)
	}
	f.watcher = w
	go f.follow(ctx)
	return f, nil
}

func readPolicy(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &PolicyError{File: path, Err: err}
	}
	return ParsePolicy(path, data)
}

// debounce coalesces the several events one save makes.
const debounce = 50 * time.Millisecond

func (f *PolicyFile) follow(ctx context.Context) {
	defer close(f.done)
	defer f.watcher.Close()
	var timer *time.Timer
	var fire <-chan time.Time
	base := filepath.Base(f.path)
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-f.watcher.Events:
			if !ok {
				return
			}
			if name := filepath.Base(ev.Name); name != base && !strings.HasPrefix(name, "..") {
				continue // another file of the directory (..data is a ConfigMap swap)
			}
			if timer == nil {
				timer = time.NewTimer(debounce)
			} else {
				timer.Reset(debounce)
			}
			fire = timer.C
		case err, ok := <-f.watcher.Errors:
			if !ok {
				return
			}
			f.log.Warn("policy watch", "file", f.path, "err", err)
		case <-fire:
			fire = nil
			f.Reload()
		}
	}
}

// Reload reads the file again now. On error the policy in force is
// kept, and the error is returned and kept for Err.
func (f *PolicyFile) Reload() error {
	f.mu.Lock()
	p, err := readPolicy(f.path)
	if err == nil {
		f.Set(p)
		f.log.Info("policy reloaded", "file", f.path, "rules", p.Rules())
	} else {
		f.log.Error("policy refused; the last good policy stays in force", "err", err)
	}
	f.err = err
	hooks := f.onReload
	f.mu.Unlock()
	for _, fn := range hooks {
		fn(err)
	}
	return err
}

// Close stops following the file.
func (f *PolicyFile) Close() error {
	err := f.watcher.Close()
	<-f.done
	return err
}
