package mysqlstore

import (
	"errors"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-sql-driver/mysql"
)

// Server error numbers the store tells apart. Both clients report the server's number: errors
// are classified by it, never by their text.
const (
	errNoSuchTable     = 1146
	errNoSuchColumn    = 1054
	errNoSuchDatabase  = 1049
	errTableDenied     = 1142
	errColumnDenied    = 1143
	errDuplicateEntry  = 1062
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

// binlogErrNumber is the server's error number in err from go-mysql's binlog client, or 0.
func binlogErrNumber(err error) uint16 {
	var me *gomysql.MyError
	if errors.As(err, &me) {
		return me.Code
	}
	return 0
}
