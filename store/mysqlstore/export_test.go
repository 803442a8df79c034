package mysqlstore

// SetRecordHook makes f run in each transaction that records a log batch, with the outbox
// table's database, until the returned function is called.
func SetRecordHook(f func(schema string)) (restore func()) {
	recordHook.Store(&f)
	return func() { recordHook.Store(nil) }
}
