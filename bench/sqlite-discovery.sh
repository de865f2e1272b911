#!/usr/bin/env bash
# SQLite discovery over 300k files holding 50 databases: `sqlite-dump
# --dry-run` (reads each regular file's 16-byte header, lstat-free walk
# with O_NOFOLLOW) against the standard tools measured in the same run:
#   find -type f -exec head -c 16 {} +   (the same reads, by hand)
#   find -type f                         (the metadata-only floor)
# Prints ratios (lower is better for sqlite-dump). Warm cache, best of 3.
# Env: FILES (default 300000), DBS (50), BIN (dir of the release binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-300000}
DBS=${DBS:-50}
if [ -z "${BIN:-}" ]; then
    target=$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    BIN="$target/release"
fi
tool="$BIN/sqlite-dump"
[ -x "$tool" ] || { echo "bench: $tool is not built (cargo build --release -p sqlite-dump)" >&2; exit 1; }

work=$(mktemp -d /tmp/sqlite-discovery-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/src"

# 300k small files in a tree of 3 levels (about 100 per directory), with
# DBS real databases scattered through it at various depths.
python3 - "$src" "$FILES" "$DBS" <<'PY'
import os, sys, sqlite3
root, n, dbs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
step = max(1, n // dbs)
for i in range(n):
    d = os.path.join(root, f"ns{i // 10000:02d}", f"pvc{(i // 100) % 100:02d}", f"d{i % 7}")
    os.makedirs(d, exist_ok=True)
    if i % step == 0 and i // step < dbs:
        c = sqlite3.connect(os.path.join(d, f"app{i}.db"))
        c.execute("CREATE TABLE t(x)"); c.execute("INSERT INTO t VALUES (1)"); c.commit(); c.close()
    else:
        with open(os.path.join(d, f"f{i}.txt"), "w") as f:
            f.write("file %d\n" % i)
PY

now() { date +%s%N; }
best() { # best wall time in nanoseconds of 3 runs of "$@" (output discarded)
    local b= t s
    for _ in 1 2 3; do
        s=$(now); "$@" >/dev/null 2>&1 || true; t=$(( $(now) - s ))
        if [ -z "$b" ] || [ "$t" -lt "$b" ]; then b=$t; fi
    done
    echo "$b"
}
found=$("$tool" "$src" --to "$work/dest" --dry-run -q | wc -l)
[ "$found" -eq "$DBS" ] || { echo "bench: sqlite-dump found $found databases, expected $DBS" >&2; exit 1; }
find "$src" -type f >/dev/null # warm the cache

t_tool=$(best "$tool" "$src" --to "$work/dest" --dry-run -q)
t_head=$(best find "$src" -type f -exec head -c 16 {} +)
t_find=$(best find "$src" -type f)
printf 'files: %d, databases: %d (all found)\n' "$FILES" "$DBS"
awk -v a="$t_tool" -v h="$t_head" -v f="$t_find" 'BEGIN {
    printf "sqlite-dump --dry-run          %8.3f s\n", a / 1e9
    printf "find -exec head -c 16 {} +     %8.3f s\n", h / 1e9
    printf "find -type f                   %8.3f s\n", f / 1e9
    printf "ratio sqlite-dump / find+head: %.2f\n", a / h
    printf "ratio sqlite-dump / find:      %.2f\n", a / f
}'
