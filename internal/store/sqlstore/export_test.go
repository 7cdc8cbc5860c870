package sqlstore

import "time"

// withClock sets the store's clock (options.now); a nil now means
// time.Now.
func withClock(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}

// withBeforeBatch installs a hook that the writer runs before it collects
// each batch; see options.beforeBatch.
func withBeforeBatch(f func()) Option {
	return func(o *options) { o.beforeBatch = f }
}
