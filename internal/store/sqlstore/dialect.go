package sqlstore

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
)

// dialect is what truly differs between the databases the store runs on.
// Everything else (the queries, the writer, every invariant) is written
// once, in this package, against database/sql.
type dialect interface {
	// name prefixes the store's errors ("sqlite", "postgres").
	name() string
	// query rewrites a query written in the package's form (? and ?N
	// placeholders, {{recorded}} for the column that orders rows recorded
	// at the same time) into the database's.
	query(q string) string
	// lockHead is the statement every write transaction runs first: it
	// reads the head of the audit hash chain (seq, hash) and, where
	// several processes write, locks it so their transactions run one at
	// a time.
	lockHead() string
	// conflict says which uniqueness constraint, if any, err violated.
	conflict(err error) conflict
	// classify wraps in store.ErrUnavailable an error that says the
	// database could not be reached.
	classify(err error) error
	// auditText is the column value of an audit log's free text.
	auditText(s string) any
	// notify tells the processes that follow the change feed, in tx and
	// on its commit, that the feed grew.
	notify(ctx context.Context, tx *sql.Tx) error
	// migrations returns the dialect's schema migrations in order.
	migrations() ([]migration, error)
	// prepareMigration readies conn, the connection the migration
	// transaction runs on, before it begins; restore undoes it after the
	// transaction ends (restore's error matters after a commit only).
	prepareMigration(ctx context.Context, conn *sql.Conn) (restore func(context.Context) error, err error)
	// checkMigration runs last in the migration transaction, before it
	// commits: an error rolls the migration back.
	checkMigration(ctx context.Context, tx *sql.Tx) error
	// beginMigration runs first in the migration transaction: it makes
	// processes that open one new database together migrate it once.
	beginMigration(ctx context.Context, tx *sql.Tx) error
	// schemaVersionDDL creates the table of applied migrations.
	schemaVersionDDL() string
	// hasTable is a query of one boolean row: whether the table named by
	// its one parameter exists (in the search path, on PostgreSQL).
	hasTable() string
}

// conflict is the uniqueness constraint a write violated.
type conflict int

const (
	noConflict conflict = iota
	// primaryKey: the row's primary key is taken.
	primaryKey
	// unique: another UNIQUE column's value is taken.
	unique
)

// rebindDollar rewrites ? and ?N placeholders to PostgreSQL's $N: a
// plain ? takes the number after the highest one so far, as SQLite
// numbers it. The queries hold no ? inside a string literal.
func rebindDollar(q string) string {
	var b strings.Builder
	b.Grow(len(q) + 8)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] != '?' {
			b.WriteByte(q[i])
			continue
		}
		j := i + 1
		for j < len(q) && q[j] >= '0' && q[j] <= '9' {
			j++
		}
		k := n + 1
		if j > i+1 {
			k, _ = strconv.Atoi(q[i+1 : j])
		}
		n = max(n, k)
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(k))
		i = j - 1
	}
	return b.String()
}

// replaceRecorded puts col, the column that orders rows recorded at the
// same time, in place of {{recorded}} in q.
func replaceRecorded(q, col string) string {
	return strings.ReplaceAll(q, "{{recorded}}", col)
}
