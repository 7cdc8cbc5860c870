package store

import (
	"context"
	"strings"
)

// actorKey carries, in a context, the admin identity a request acts as.
type actorKey struct{}

// WithActor returns ctx naming actor as the admin identity on whose behalf
// what runs under it is done: the audit entries of revocations,
// reinstatements and entity revocations name it ("by <actor>"). Only the
// admin surface sets it, from what authenticated the request (the admin
// socket's peer uid, the admin certificate's identity, the console
// session's), never from anything the caller wrote in a body.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// Actor returns the actor ctx names; "" when none (meshctl offline, a
// replica's change feed).
func Actor(ctx context.Context) string {
	a, _ := ctx.Value(actorKey{}).(string)
	return a
}

// actorSep separates an audit entry's detail from the actor it names.
const actorSep = "by "

// Attributed returns detail with ctx's actor appended ("reason
// keyCompromise; by uid 0 (admin socket)"), or detail as it is without
// one.
func Attributed(ctx context.Context, detail string) string {
	a := Actor(ctx)
	switch {
	case a == "":
		return detail
	case detail == "":
		return actorSep + a
	}
	return detail + "; " + actorSep + a
}

// AttributedTo returns the actor an audit entry's detail names, as
// Attributed wrote it; "" when it names none.
func AttributedTo(detail string) string {
	if strings.HasPrefix(detail, actorSep) {
		return detail[len(actorSep):]
	}
	if i := strings.LastIndex(detail, "; "+actorSep); i >= 0 {
		return detail[i+len("; "+actorSep):]
	}
	return ""
}
