package meshauth

import "github.com/prometheus/client_golang/prometheus"

// Decisions returns the decisions metric, for tests (a service registers
// it through Config.Registerer).
func (a *Auth) Decisions() *prometheus.CounterVec { return a.decisions }

// Err returns why the last reload was refused, nil when it took effect.
func (f *PolicyFile) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// OnReload registers fn to run after every reload with its outcome.
func (f *PolicyFile) OnReload(fn func(error)) {
	f.mu.Lock()
	f.onReload = append(f.onReload, fn)
	f.mu.Unlock()
}
