#!/usr/bin/env bash
# Measures CA issuance against raw x509.CreateCertificate in the same run
# (BenchmarkIssue in internal/ca) and prints the ratio ca/raw; the target is
# at least 0.5. It also prints ca/csr, against a storeless CA that parses
# and checks the CSR and signs: the cost of policy and durable recording. It also prints the ratio of CPU time per certificate
# (raw/ca), which holds up better than throughput on a machine that other
# work is using. Extra arguments go to go test (e.g. -count=5).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=$(go test -run='^$' -bench=BenchmarkIssue -benchtime=3s -count=3 "$@" ./internal/ca/)
printf '%s\n' "$out"

# A result line reads "BenchmarkIssue/<sub>-<procs> <n> <x> ns/op <y>
# certs/s <z> cpu-us/cert": average each metric per sub-benchmark.
printf '%s\n' "$out" | awk '
	/^BenchmarkIssue\// {
		sub_ = $1
		sub(/^BenchmarkIssue\//, "", sub_)
		sub(/-[0-9]+$/, "", sub_)
		for (i = 3; i < NF; i++) {
			if ($(i + 1) == "certs/s") { rate[sub_] += $i; n[sub_]++ }
			if ($(i + 1) == "cpu-us/cert") cpu[sub_] += $i
		}
	}
	END {
		if (!n["raw"] || !n["ca"]) {
			print "issue.sh: no raw or ca results in the benchmark output" > "/dev/stderr"
			exit 1
		}
		for (s in n) { rate[s] /= n[s]; cpu[s] /= n[s] }
		printf "\nraw %.0f certs/s, %.0f cpu-us/cert (mean of %d runs)\n", rate["raw"], cpu["raw"], n["raw"]
		printf "csr %.0f certs/s, %.0f cpu-us/cert (mean of %d runs)\n", rate["csr"], cpu["csr"], n["csr"]
		printf "ca  %.0f certs/s, %.0f cpu-us/cert (mean of %d runs)\n", rate["ca"], cpu["ca"], n["ca"]
		printf "throughput ratio ca/raw %.2f (target >= 0.50)\n", rate["ca"] / rate["raw"]
		printf "CPU-cost ratio raw/ca   %.2f\n", cpu["raw"] / cpu["ca"]
		printf "throughput ratio ca/csr %.2f (policy and durable recording alone)\n", rate["ca"] / rate["csr"]
		printf "CPU-cost ratio csr/ca   %.2f\n", cpu["csr"] / cpu["ca"]
	}'
