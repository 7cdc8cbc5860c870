package filestore

// WithDebounce is the test knob over the reload's debounce.
var WithDebounce = withDebounce
