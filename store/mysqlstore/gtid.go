package mysqlstore

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// gtid is a MariaDB GTID without its domain.
type gtid struct {
	server uint32
	seq    uint64
}

// parseGTIDs reads a MariaDB GTID position, "domain-server-seq" per domain, comma separated.
func parseGTIDs(s string) (map[uint32]gtid, error) {
	out := map[uint32]gtid{}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		f := strings.Split(part, "-")
		if len(f) != 3 {
			return nil, fmt.Errorf("GTID %q is not domain-server-seq", part)
		}
		d, err1 := strconv.ParseUint(f[0], 10, 32)
		sv, err2 := strconv.ParseUint(f[1], 10, 32)
		seq, err3 := strconv.ParseUint(f[2], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, fmt.Errorf("GTID %q: %w", part, err)
		}
		out[uint32(d)] = gtid{server: uint32(sv), seq: seq}
	}
	return out, nil
}

// formatGTIDs writes a MariaDB GTID position, ordered by domain.
func formatGTIDs(m map[uint32]gtid) string {
	domains := make([]uint32, 0, len(m))
	for d := range m {
		domains = append(domains, d)
	}
	slices.Sort(domains)
	parts := make([]string, len(domains))
	for i, d := range domains {
		parts[i] = fmt.Sprintf("%d-%d-%d", d, m[d].server, m[d].seq)
	}
	return strings.Join(parts, ",")
}
