// Command hello stands in for meshd and meshctl in the image test: a
// static binary that says which name it was run as.
package main

import (
	"fmt"
	"os"
	"path/filepath"
)

func main() { fmt.Println(filepath.Base(os.Args[0]), "--version") }
