package credentials

// Done returns a channel that is closed once the directory has been
// removed, after ctx ended or Close.
func (f *Files) Done() <-chan struct{} { return f.done }
