package sqlstore

// withBeforeBatch installs a hook that the writer runs before it collects
// each batch; see options.beforeBatch.
func withBeforeBatch(f func()) Option {
	return func(o *options) { o.beforeBatch = f }
}
