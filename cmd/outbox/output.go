package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// field is a labelled value of a key-value listing.
type field struct{ label, value string }

// printer writes text output in aligned columns.
type printer struct {
	w  io.Writer
	tw *tabwriter.Writer
}

// fields writes one line per field with a value, labels in a column.
func (p *printer) fields(fs ...field) {
	for _, f := range fs {
		if f.value != "" {
			fmt.Fprintf(p.tw, "%s\t%s\n", f.label, clean(f.value))
		}
	}
}

// row writes one row of a table; cells must not be empty (use "-").
func (p *printer) row(cells ...string) {
	for i, c := range cells {
		if i > 0 {
			fmt.Fprint(p.tw, "\t")
		}
		fmt.Fprint(p.tw, clean(c))
	}
	fmt.Fprintln(p.tw)
}

// flush ends the aligned block; lines after it are written as they are.
func (p *printer) flush() { p.tw.Flush() }

// line writes a line outside the aligned columns.
func (p *printer) line(format string, args ...any) {
	p.flush()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// print writes v as one JSON document with --json, and calls text to write it for people
// otherwise.
func (a *app) print(v any, text func(p *printer)) error {
	if a.g.json {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	p := &printer{w: a.stdout, tw: tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)}
	text(p)
	return p.tw.Flush()
}

// clean keeps a value on its line and in its column: control characters (a newline in a
// stored error, a tab) become spaces.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// age formats a duration for people, as precisely as it matters.
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// byteSize formats a size in bytes, with a binary unit when it is large.
func byteSize(n int64) string {
	if n < 0 {
		return "unknown"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB (%d bytes)", float64(n)/float64(div), "KMGTPE"[exp], n)
}
