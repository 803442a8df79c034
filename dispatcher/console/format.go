package console

import (
	"encoding/hex"
	"fmt"
	"html/template"
	"time"
	"unicode/utf8"

	"github.com/outboxgo/outbox/store"
)

var funcs = template.FuncMap{
	"when":          when,
	"ago":           ago,
	"maxParkedKeys": func() int { return store.MaxParkedKeys },
}

// when shows a time in UTC to the second; the zero time shows as a dash.
func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// ago shows how long ago t was, roughly.
func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return age(time.Since(t)) + " ago"
}

func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

func bytesSize(n int64) string {
	switch {
	case n < 0:
		return "unknown"
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

// Bounds of a payload preview.
const (
	previewTextBytes = 2048
	previewHexBytes  = 512
)

// preview is the start of a payload, as text when it reads as text and as a hex dump
// otherwise. Templates escape it like any other string.
type preview struct {
	Size      int
	Hex       bool
	Text      string
	Truncated bool
}

func previewOf(b []byte) preview {
	p := preview{Size: len(b)}
	cut := b
	if len(cut) > previewTextBytes {
		cut = cut[:previewTextBytes]
		// Do not split the last character.
		for i := 0; i < utf8.UTFMax && len(cut) > 0 && !utf8.Valid(cut); i++ {
			cut = cut[:len(cut)-1]
		}
	}
	if readable(cut) {
		p.Text, p.Truncated = string(cut), len(cut) < len(b)
		return p
	}
	cut = b[:min(len(b), previewHexBytes)]
	p.Hex, p.Text, p.Truncated = true, hex.Dump(cut), len(cut) < len(b)
	return p
}

// readable is true for valid UTF-8 without control characters other than white space.
func readable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if r < 0x20 && r != '\n' && r != '\r' && r != '\t' || r == 0x7f {
			return false
		}
	}
	return true
}
