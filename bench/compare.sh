#!/usr/bin/env bash
# compare.sh — the go benchmarks of two trees of meshtrust, alternating, in
# one run: REV (checked out into a temporary git worktree) against the
# working tree. For a change that must not regress: the machine's noise
# hits both trees alike, so the after/before ratio of each figure's median
# is the number to read.
#
#   bash bench/compare.sh REV [ROUNDS]
#
# Each round runs every benchmark below once in each tree, the order
# alternating between rounds (before then after, after then before, ...);
# ROUNDS defaults to 3. Test binaries are built first, so that no build
# runs beside a measurement. A package that REV has under another name is
# written NEW=OLD in PKGS (the SQL store was internal/store/sqlite before
# issue 20). It prints, for each benchmark and metric, the medians, their
# ratio and each tree's range; the raw outputs stay in $OUT.
#
# Env: PKGS (package=benchmark-regexp pairs, space separated),
#      BENCHTIME (1s), OUT (results dir, default a temp dir).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
REV=${1:?usage: bash bench/compare.sh REV [ROUNDS]}
ROUNDS=${2:-3}
BENCHTIME=${BENCHTIME:-1s}
PKGS=${PKGS:-"internal/ca=BenchmarkIssue internal/store/sqlstore=internal/store/sqlite=BenchmarkRecordCert|BenchmarkPutAgents|BenchmarkLiveAgents internal/registry=BenchmarkUnchangedHeartbeat|BenchmarkList meshauth=. trust=BenchmarkChainVerify"}
OUT=${OUT:-$(mktemp -d)}
before=$(mktemp -d)
trap 'git -C "$ROOT" worktree remove --force "$before" >/dev/null 2>&1 || true' EXIT
git worktree add --detach -q "$before" "$REV"

# build TREE TAG: one test binary per package, named TAG.N.
i=0
build() {
	local tree=$1 tag=$2 n=0 spec pkg old
	for spec in $PKGS; do
		pkg=${spec%%=*}
		old=$(echo "$spec" | awk -F= 'NF == 3 { print $2 }')
		if [ "$tag" = before ] && [ -n "$old" ] && [ ! -d "$tree/$pkg" ]; then
			pkg=$old
		fi
		(cd "$tree" && go test -c -o "$OUT/$tag.$n.test" "./$pkg/")
		n=$((n + 1))
	done
}
build "$before" before
build "$ROOT" after

run() { # TAG
	local n=0 spec pkg
	for spec in $PKGS; do
		pkg=${spec%%=*}
		# Run where the package's tests expect to be; both trees' binaries
		# read the same (current) directory.
		(cd "$ROOT/$pkg" && "$OUT/$1.$n.test" -test.run '^$' -test.bench "${spec##*=}" -test.benchtime "$BENCHTIME") >>"$OUT/$1.txt" 2>&1
		n=$((n + 1))
	done
}
for r in $(seq 1 "$ROUNDS"); do
	if [ $((r % 2)) = 1 ]; then run before; run after; else run after; run before; fi
	echo "compare.sh: round $r of $ROUNDS done" >&2
done

python3 - "$OUT" <<'EOF'
import statistics as st, sys
def load(path):
    d = {}
    for line in open(path):
        if not line.startswith('Benchmark'):
            continue
        f = line.split()
        m = {}
        for i in range(2, len(f) - 1):
            try:
                m[f[i + 1]] = float(f[i])
            except ValueError:
                pass
        d.setdefault(f[0].rsplit('-', 1)[0], []).append(m)
    return d
out = sys.argv[1]
b, a = load(out + '/before.txt'), load(out + '/after.txt')
print(f"{'benchmark':46s} {'metric':14s} {'before':>10s} {'after':>10s} {'after/before':>12s}  ranges")
for name in sorted(set(b) & set(a)):
    for k in b[name][0]:
        if k in ('B/op', 'allocs/op') or not all(k in x for x in a[name]):
            continue
        bv, av = [x[k] for x in b[name]], [x[k] for x in a[name]]
        mb, ma = st.median(bv), st.median(av)
        print(f"{name:46s} {k:14s} {mb:10.4g} {ma:10.4g} {ma / mb if mb else 0:12.2f}  "
              f"{min(bv):.4g}-{max(bv):.4g} / {min(av):.4g}-{max(av):.4g}")
EOF
echo "compare.sh: raw outputs in $OUT" >&2
