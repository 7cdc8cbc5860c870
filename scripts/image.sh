#!/usr/bin/env bash
# Builds meshtrust's container image without a Docker daemon or a base
# image: static meshd and meshctl (CGO_ENABLED=0, trimmed paths, no build
# id), then deploy/image assembles them into an OCI image layout.
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
