package main

import (
	"fmt"
	"strconv"
)

// defaultGCPercent is meshd's garbage-collection target when neither
// --gc-percent, MESHD_GC_PERCENT nor GOGC says otherwise. BENCHMARKS.md
// ("Memory per live agent") has what each target measured per live agent
// and what it cost the heartbeat path.
const defaultGCPercent = 100

// gcPercent returns the collection target (percent of the live heap the
// heap may grow by before the next collection) meshd sets: --gc-percent
// when given, else MESHD_GC_PERCENT when set, else 0 when GOGC is set
// (the Go runtime applied it already and meshd leaves it, "off"
// included), else defaultGCPercent. A target below 1 is refused: it
// would collect back to back, and GOGC=off with a GOMEMLIMIT is the way
// to turn the proportional target off.
func gcPercent(flag int, flagSet bool, getenv func(string) string) (int, error) {
	if !flagSet {
		switch v := getenv("MESHD_GC_PERCENT"); {
		case v != "":
			n, err := strconv.Atoi(v)
			if err != nil {
				return 0, fmt.Errorf("MESHD_GC_PERCENT=%q: want a whole percentage of the live heap, such as %d", v, defaultGCPercent)
			}
			flag = n
		case getenv("GOGC") != "":
			return 0, nil
		default:
			return defaultGCPercent, nil
		}
	}
	if flag < 1 {
		return 0, fmt.Errorf("--gc-percent %d (MESHD_GC_PERCENT): want a positive percentage of the live heap (%d by default; lower trades CPU for memory); GOGC=off with GOMEMLIMIT turns the proportional target off", flag, defaultGCPercent)
	}
	return flag, nil
}
