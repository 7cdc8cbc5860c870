package server

// TokenPrefix starts every join token; the tests forge and recognise
// tokens with it.
const TokenPrefix = tokenPrefix
