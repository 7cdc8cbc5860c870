package storetest

import (
	"database/sql"
	"fmt"
	"testing"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// SQLiteProblems runs SQLite's integrity and foreign key checks over the
// whole database file at path and returns the problems found (at most 20
// from the integrity check), none for a sound file: for the tests that
// kill a writer, or damage a file on purpose, and then look at the file.
func SQLiteProblems(tb testing.TB, path string) []string {
	tb.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	var problems []string
	msgs := queryStrings(tb, db, "PRAGMA integrity_check(20)", func(rows *sql.Rows) (string, error) {
		var msg string
		return msg, rows.Scan(&msg)
	})
	for _, msg := range msgs {
		if msg != "ok" {
			problems = append(problems, msg)
		}
	}
	return append(problems, queryStrings(tb, db, "PRAGMA foreign_key_check", func(rows *sql.Rows) (string, error) {
		var table, parent string
		var rowid sql.NullInt64
		var fkid int64
		err := rows.Scan(&table, &rowid, &parent, &fkid)
		return fmt.Sprintf("row %d of %s refers to a missing row of %s", rowid.Int64, table, parent), err
	})...)
}

// queryStrings returns what scan makes of each row of query.
func queryStrings(tb testing.TB, db *sql.DB, query string, scan func(*sql.Rows) (string, error)) []string {
	tb.Helper()
	rows, err := db.Query(query)
	if err != nil {
		tb.Fatalf("%s: %v", query, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		s, err := scan(rows)
		if err != nil {
			tb.Fatalf("%s: %v", query, err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		tb.Fatalf("%s: %v", query, err)
	}
	return out
}
