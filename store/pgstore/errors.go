package pgstore

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

func isPermission(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42501"
}
