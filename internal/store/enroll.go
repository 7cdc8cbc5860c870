package store

import (
	"errors"
	"time"
)

// Errors of join tokens, which callers branch on to audit and answer.
var (
	// ErrTokenUsed reports a join token that already enrolled its node.
	ErrTokenUsed = errors.New("store: join token already used")
	// ErrTokenExpired reports a join token past its expiry.
	ErrTokenExpired = errors.New("store: join token expired")
	// ErrTokenNode reports a join token presented for another node id.
	ErrTokenNode = errors.New("store: join token is for another node")
)

// JoinToken is a one-time credential that enrolls exactly one node. The
// store keeps only the token's hash.
type JoinToken struct {
	// Hash is the lowercase hex SHA-256 of the token.
	Hash      string
	NodeID    string
	CreatedAt time.Time
	ExpiresAt time.Time
	// UsedAt is set when the token enrolled its node.
	UsedAt time.Time
}
