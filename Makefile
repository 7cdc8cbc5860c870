# Build, test and fuzz meshtrust. `make test` is what CI runs (.ci/run).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

GO ?= go
# Packages to vet, test, bench and fuzz: `make test PKGS=./identity/...`.
PKGS ?= ./...
# How long each fuzz target runs under `make fuzz`.
FUZZTIME ?= 30s

.PHONY: test deps vet fmt-check unit bench fuzz build demo run

test: deps vet fmt-check unit

deps:
	bash scripts/install-test-deps.sh

vet:
	$(GO) vet $(PKGS)

# gofmt takes directories, not package patterns: ./... becomes ".".
fmt-check:
	@unformatted=$$(gofmt -l $(patsubst %/...,%,$(PKGS))); \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files are not formatted (run gofmt -w on them):"; \
		echo "$$unformatted"; \
		exit 1; \
	fi

unit:
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

bench:
	$(GO) test -run='^$$' -bench=. -benchmem $(PKGS)

# Runs every Fuzz* target in every package for FUZZTIME each; go test -fuzz
# takes one target in one package at a time.
fuzz:
	@pkgs=$$($(GO) list $(PKGS)); \
	for pkg in $$pkgs; do \
		targets=$$($(GO) test -list '^Fuzz' "$$pkg"); \
		for t in $$(awk '/^Fuzz/' <<<"$$targets"); do \
			echo "== fuzz $$pkg $$t ($(FUZZTIME))"; \
			$(GO) test -run='^$$' -fuzz="^$$t\$$" -fuzztime=$(FUZZTIME) "$$pkg"; \
		done; \
	done

build:
	$(GO) build -o bin/ ./cmd/...

# The main job: meshd on its embedded defaults, with a fresh mesh CA. It
# runs from ./bin beside the meshctl it was built with, so the commands it
# prints (./bin/meshctl ...) work pasted here.
run: build
	./bin/meshd --dev --data-dir ./meshtrust-data

# A CA-only walkthrough checked by OpenSSL.
demo:
	bash scripts/demo.sh
