package server

import (
	"context"
	"fmt"
	"net"
	"net/http"

	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/meshauth"
)

// socketActor names the admin socket's caller for the audit log from the
// connection itself: the peer's uid as the kernel reports it
// (SO_PEERCRED), never anything the caller sent. It is the admin socket's
// http.Server.ConnContext.
func socketActor(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return store.WithActor(ctx, "admin socket")
	}
	uid, err := peerUID(uc)
	if err != nil {
		return store.WithActor(ctx, "an unknown uid (admin socket)")
	}
	return store.WithActor(ctx, fmt.Sprintf("uid %d (admin socket)", uid))
}

// certActor names the mTLS admin listener's caller for the audit log: the
// mesh identity the mesh CA vouched for (meshauth's Caller.Identity, in
// its canonical common name, "admin@external"). The listener's chain
// holds the mesh CA alone, so no other source names an admin.
func certActor(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := meshauth.FromContext(r.Context()); ok && c.MeshCA {
			r = r.WithContext(store.WithActor(r.Context(), c.Identity.CommonName()))
		}
		next.ServeHTTP(w, r)
	})
}
