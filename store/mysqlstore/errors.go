package mysqlstore

import (
	"errors"

	"github.com/go-sql-driver/mysql"
)

// MySQL error numbers the reader tells apart.
const (
	errNoSuchTable     = 1146
	errTableDenied     = 1142
	errDBDenied        = 1044
	errAccessDenied    = 1045
	errSpecificDenied  = 1227
	errSyntax          = 1064
	errFatalBinlogRead = 1236 // the binlog does not hold the requested position
)

// sqlErrNumber is the server's error number in err from go-sql-driver/mysql, or 0.
func sqlErrNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}
