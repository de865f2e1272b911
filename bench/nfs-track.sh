#!/usr/bin/env bash
# nfs-track against `inotifywait -m -r` (the tracker it replaces), on the
# same trees in the same run, printed as ratios:
#   - watch setup on DIRS directories (default 20000 and 100000): time to
#     ready and peak RSS, for inotifywait and both nfs-track backends;
#   - a burst of FILES creates (default 200000) spread over the 20k tree:
#     paths that never reached the log (or the marker set instead), CPU
#     seconds per 100k events, log bytes.
# Runs in a private mount namespace on a tmpfs (nothing left behind).
# Usage: bench/nfs-track.sh [DIR_OF_BUILT_BINARIES]   (default target/release)
# Env: DIRS="20000 100000" FILES=200000. Needs root, python3, inotifywait.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${BIN:-target/release}}
BIN=$(cd "$BIN" && pwd)
if [ -z "${NFS_TRACK_BENCH_NS:-}" ]; then
    exec env NFS_TRACK_BENCH_NS=1 unshare -m --propagation private "$0" "$BIN"
fi
for t in python3 inotifywait "$BIN/nfs-track"; do
    command -v "$t" >/dev/null || { echo "bench: $t not found" >&2; exit 1; }
done
W=$(mktemp -d /tmp/nfs-track-bench.XXXXXX)
mount -t tmpfs -o size=4g,nr_inodes=2m none "$W"
trap 'umount -l "$W" 2>/dev/null; rmdir "$W" 2>/dev/null || true' EXIT
python3 "bench/nfs-track-bench.py" "$W" "$BIN/nfs-track" "${DIRS:-20000 100000}" "${FILES:-200000}"
