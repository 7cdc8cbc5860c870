package sqlstore

import "testing"

// The queries are written once with SQLite's placeholders; PostgreSQL's
// dialect numbers them as SQLite does: ?N is $N, and a plain ? takes the
// number after the highest one so far.
func TestRebindDollar(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`SELECT 1`, `SELECT 1`},
		{`a = ? AND b = ?`, `a = $1 AND b = $2`},
		{`a IN (?1, ?2) AND c = ?3 AND d = ?3`, `a IN ($1, $2) AND c = $3 AND d = $3`},
		{`a = ?4, b = ?5 WHERE id = ?1 AND v <= ?12`, `a = $4, b = $5 WHERE id = $1 AND v <= $12`},
		{`a = ?2, b = ?`, `a = $2, b = $3`},
	} {
		if got := rebindDollar(tt.in); got != tt.want {
			t.Errorf("rebindDollar(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got, want := (postgresDialect{}).query(`ORDER BY issued_at, {{recorded}}`), `ORDER BY issued_at, recorded`; got != want {
		t.Errorf("postgres query = %q, want %q", got, want)
	}
	if got, want := (sqliteDialect{}).query(`x = ?1 ORDER BY issued_at, {{recorded}}`), `x = ?1 ORDER BY issued_at, rowid`; got != want {
		t.Errorf("sqlite query = %q, want %q", got, want)
	}
}
