package file

// Test knobs: the debounce and its clock.
var (
	WithDebounce = withDebounce
	WithClock    = withClock
)
