#!/usr/bin/env bash
# Builds meshtrust's container images without a Docker daemon or a base
# image: static meshd and meshctl (CGO_ENABLED=0, trimmed paths, no build
# id), which deploy/image assembles into an OCI image layout in OUT-DIR,
# tagged TAG; and the PKCS#11 variant, cgo builds (CGO_ENABLED=1) with the
# dynamic loader and the shared libraries ldd lists for them, in
# OUT-DIR-pkcs11, tagged TAG-pkcs11 (the chart's meshd.ca.source pkcs11
# runs it; deploy/image/Dockerfile.pkcs11 builds it with a daemon).
#
#   scripts/image.sh OUT-DIR [TAG]
#
# The layout loads with `skopeo copy oci:OUT-DIR:TAG docker-daemon:…`,
# `podman load -i` (after tar), or pushes with `crane push OUT-DIR …`.
# SOURCE_DATE_EPOCH sets the files' times (default 0): the same source
# gives the same image digest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:?usage: scripts/image.sh OUT-DIR [TAG]}
tag=${2:-dev}
arch=${GOARCH:-$(go env GOARCH)}
work=$(mktemp -d -t meshtrust-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
for cmd in meshd meshctl; do
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags=-buildid= -o "$work/$cmd" "./cmd/$cmd"
done
go run ./deploy/image -meshd "$work/meshd" -meshctl "$work/meshctl" -out "$out" -tag "$tag" -arch "$arch"
# The cgo variant's shared libraries are the build machine's (Debian 12's
# glibc in CI): build it where the target's glibc is at least as new.
mkdir "$work/cgo"
for cmd in meshd meshctl; do
	CGO_ENABLED=1 GOOS=linux GOARCH=$arch go build -trimpath -ldflags=-buildid= -o "$work/cgo/$cmd" "./cmd/$cmd"
done
go run ./deploy/image -cgo -meshd "$work/cgo/meshd" -meshctl "$work/cgo/meshctl" -out "$out-pkcs11" -tag "$tag-pkcs11" -arch "$arch"
