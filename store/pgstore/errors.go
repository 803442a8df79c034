package pgstore

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// SQLSTATE codes the store tells apart. Errors are classified by code, never by their text,
// which changes with the server's version and its lc_messages.
const (
	codeInvalidAuthorization  = "28000" // invalid_authorization_specification: pg_hba.conf turned the connection away
	codeInsufficientPrivilege = "42501"
	codeUndefinedTable        = "42P01"
	codeUndefinedColumn       = "42703"
	codeInvalidSchemaName     = "3F000"
	codeUniqueViolation       = "23505"
	codeUndefinedObject       = "42704"
	codeDuplicateObject       = "42710"
	codeConfigLimitExceeded   = "53400" // configuration_limit_exceeded: no free replication slot
)

// sqlState is the SQLSTATE of the server's error in err, or "" when err is none of the
// server's (a network failure, say).
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// isPermission reports whether the server refused for want of a privilege or role attribute.
func isPermission(err error) bool {
	return sqlState(err) == codeInsufficientPrivilege
}
