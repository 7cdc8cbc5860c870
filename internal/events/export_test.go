package events

// publishedCursor returns the feed's published cursor: every event at or
// below it has been taken in, applied or waiting in Pending's retries.
func (f *Feed) publishedCursor() int64 {
	_, cursor := f.Synced()
	return cursor
}
