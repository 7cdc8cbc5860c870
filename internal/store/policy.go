package store

import (
	"time"
)

// Policy is an allow-list policy document (meshauth's YAML) by name.
type Policy struct {
	Name     string
	Document string
	Updated  time.Time
}
