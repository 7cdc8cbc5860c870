package meshauth

import (
	"context"
	"crypto/tls"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// UnaryServerInterceptor verifies and authorizes each unary call (its full
// method as a KindGRPC Operation) and puts the Caller in its context. A
// session token travels in the "authorization" metadata as "Bearer ...".
// Refusals are codes.Unauthenticated and codes.PermissionDenied with the
// reason in the message.
func (a *Auth) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		ctx, err := a.grpcCall(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streams: the
// stream is authorized once, when it opens.
func (a *Auth) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		ctx, err := a.grpcCall(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return h(srv, &callerStream{ServerStream: ss, ctx: ctx})
	}
}

type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *callerStream) Context() context.Context { return s.ctx }

func (a *Auth) grpcCall(ctx context.Context, method string) (context.Context, error) {
	op := Operation{Kind: KindGRPC, Path: method}
	var state *tls.ConnectionState
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			state = &ti.State
		}
	}
	var token string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if vs := md.Get("authorization"); len(vs) == 1 {
			token = bearer(vs[0])
		}
	}
	c, gen, rf := a.identify(ctx, nil, state, token)
	if rf == nil {
		_, rf = a.decide(c, &op)
	} else {
		a.refused(&op, rf)
	}
	if rf != nil {
		code := codes.Unauthenticated
		if rf.code == 403 {
			code = codes.PermissionDenied
		}
		return nil, status.Errorf(code, "%s: %s", rf.reason, rf.detail)
	}
	return withVerified(ctx, verifiedOf(c, gen, state)), nil
}
