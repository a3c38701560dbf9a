package cli

import "fmt"

// line prints one progress line to stderr: the printf-style shape every
// library's Log and Note take (flash.Note).
func (e *env) line(format string, a ...any) { fmt.Fprintf(e.stderr, format+"\n", a...) }

// kilnLine is line with a "kiln: " prefix (fetch and lock remarks).
func (e *env) kilnLine(format string, a ...any) { fmt.Fprintf(e.stderr, "kiln: "+format+"\n", a...) }
