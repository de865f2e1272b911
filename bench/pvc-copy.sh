#!/usr/bin/env bash
# pvc-copy against the standard tool, measured in the same run:
#  1. the first copy of a snapshot: pvc-copy (lvs + kubectl emulated,
#     blkid, loop mount ro,noload in a private namespace, rsync -aHAX with
#     itemize, atomic swap, ledger) vs `mount -o loop,ro,noload` + bare
#     `rsync -a` of the same image into an empty directory (target: <= 1.05),
#     and vs the same mount + `rsync -aHAX --numeric-ids`: what -H, -A and -X
#     cost by themselves, so the tool's own overhead shows.
#  2. the next week's version of the same tree, unchanged and with a few
#     files changed: extra disk used vs the bytes that changed (target: only
#     the changed bytes plus metadata: directories and inodes, no data).
# The emulated host (homelab-emu) stands for the Proxmox LVM and Kubernetes;
# the images, mounts and rsync are real. Warm cache, best of 3.
# Env: FILES (default 10000 small files), BIG_MB (default 128, in 8 files),
#      BIN (dir of the release binaries, incl. homelab-emu).
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-10000}
BIG_MB=${BIG_MB:-128}
if [ -z "${BIN:-}" ]; then
    target=$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    BIN="$target/release"
fi
for b in pvc-copy homelab-emu; do
    [ -x "$BIN/$b" ] || { echo "bench: $BIN/$b is not built (cargo build --release --workspace --bins)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/pvc-copy-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
emu="$work/emu"
emubin="$work/emu-bin"
mkdir -p "$emu/images/pve" "$emu/dev/pve" "$emu/mapper" "$emu/tmp" "$emubin" "$work/run"
for c in lvs lvcreate lvchange kubectl cryptsetup blkid; do ln -s "$BIN/homelab-emu" "$emubin/$c"; done
export HOMELAB_EMU_STATE="$emu" BACKUP_LOCK_DIR="$work/run"

# The PVC: many small files in nested directories, a few big ones.
src="$work/src"
python3 - "$src" "$FILES" "$BIG_MB" <<'PY'
import os, sys
root, n, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:03d}", f"e{(i // 50) % 20:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.dat"), "wb") as f:
        f.write(os.urandom(512 + (i * 37) % 7000))
os.makedirs(os.path.join(root, "big"), exist_ok=True)
for j in range(8):
    with open(os.path.join(root, "big", f"blob{j}.bin"), "wb") as f:
        for _ in range(big // 8):
            f.write(os.urandom(1 << 20))
PY
src_bytes=$(du -sb "$src" | cut -f1)
img_mb=$(( src_bytes / 1048576 * 13 / 10 + 64 ))
img="$emu/images/pve/vm-100-pvc-bench.img"
truncate -s "${img_mb}M" "$img"
mkfs.ext4 -q -F -d "$src" "$img"
ln -s "$img" "$emu/dev/pve/vm-100-pvc-bench"
now=$(date +%s)
cat >"$emu/lvm.json" <<EOF
{"vgs": {"pve": {"pools": {"data": {"size": $((img_mb * 4 * 1048576)), "time": $now}},
  "lvs": {"vm-100-pvc-bench": {"pool": "data", "size": $((img_mb * 1048576)), "origin": "", "tags": [], "time": $now}}}}}
EOF
cat >"$emu/k8s.json" <<EOF
{"pvs": [{"name": "pvc-bench", "driver": "csi.proxmox.sinextra.dev",
          "volume_handle": "homelab/pve1/local-lvm/vm-100-pvc-bench", "namespace": "bench", "claim": "data"}]}
EOF
snap() { # the snapshot lvm-snap would take at 03:00 on day $1 (YYYY-MM-DD)
    "$emubin/lvcreate" -s -kn -n "vm-100-pvc-bench_snap_$(date -d "$1" +%Y%m%d)_0300" \
        --addtag backup-pipeline.lvm-snap pve/vm-100-pvc-bench >/dev/null
}
snap 2026-11-27
snapimg="$emu/images/pve/vm-100-pvc-bench_snap_20261127_0300.img"
echo "   tree: $FILES small files + ${BIG_MB} MiB in 8 files = $((src_bytes / 1048576)) MiB"

t() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
best() { sort -n | head -n1; }

pvc() {
    PATH="$emubin:$PATH" "$BIN/pvc-copy" -q --backup-root "$1" --allow-unmounted-root \
        --mapper-dir "$emu/mapper" --work-dir "$work" --min-free-pct 0 --max-snapshot-age 30d "${@:2}"
}
bare() { # rsync options
    rm -rf "$work/bare" && mkdir -p "$work/bare" "$work/mnt"
    # Paths first in the argument list, read into variables before the
    # shift: the rsync operands must never be empty (an empty one is "/").
    unshare -m --propagation private sh -ec \
        'img=$1 mnt=$2 dst=$3; shift 3; [ -n "$mnt" ] || exit 2; [ -n "$dst" ] || exit 2; mount -o loop,ro,noload -t ext4 "$img" "$mnt"; rsync "$@" -- "$mnt/" "$dst/"' \
        - "$snapimg" "$work/mnt" "$work/bare" "$@"
}
bare_a() { bare -a; }
bare_hax() { bare -aHAX --numeric-ids; }
ours() {
    rm -rf "$work/b1" && mkdir -p "$work/b1"
    pvc "$work/b1" --now 2026-11-27T05:00:00Z
}
# Warm the page cache once with each.
bare_a; ours
r_bare=$( (for _ in 1 2 3; do t bare_a; done) | best)
r_hax=$( (for _ in 1 2 3; do t bare_hax; done) | best)
r_ours=$( (for _ in 1 2 3; do t ours; done) | best)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
echo "   first copy: pvc-copy ${r_ours} ms, mount + rsync -a ${r_bare} ms, mount + rsync -aHAX ${r_hax} ms"
echo "   ratio pvc-copy / rsync -a: $(ratio "$r_ours" "$r_bare") (target <= 1.05); pvc-copy / rsync -aHAX: $(ratio "$r_ours" "$r_hax")"

# Disk used by a week given the older weeks (hardlinked files are counted
# once by du, in the first week it meets them).
week_extra() { # $1 = new week; prints bytes
    local all old
    all=$(du -sB1 "$work/b1/pvc-data" | cut -f1)
    old=$(du -sB1 --exclude="$1" "$work/b1/pvc-data" | cut -f1)
    echo $((all - old))
}
# Next week, nothing changed: the new week is hardlinks only.
pvc "$work/b1" --now 2026-12-04T05:00:00Z
extra=$(week_extra 2026-W49)
entries=$(find "$work/b1/pvc-data/2026-W49" | wc -l)
echo "   week 2, unchanged: extra disk $((extra / 1024)) KiB for $entries entries ($((extra / entries)) B each: directories only; file data 0)"

# Next week again, with two 8 MiB files rewritten: extra ~ the changed bytes.
for j in 0 1; do
    head -c $((8 << 20)) /dev/urandom >"$work/blob$j.bin"
    debugfs -w -R "rm /big/blob$j.bin" "$img" >/dev/null 2>&1
    debugfs -w -R "write $work/blob$j.bin /big/blob$j.bin" "$img" >/dev/null 2>&1
done
snap 2026-12-11
pvc "$work/b1" --now 2026-12-11T05:00:00Z
cmp -s "$work/blob0.bin" "$work/b1/pvc-data/2026-W50/bench/data/big/blob0.bin" ||
    { echo "bench: the changed file did not reach week 3" >&2; exit 1; }
extra=$(week_extra 2026-W50)
changed=$((16 << 20))
echo "   week 3, 16 MiB changed: extra disk $((extra / 1048576)) MiB, ratio to changed bytes $(awk -v a="$extra" -v b="$changed" 'BEGIN { printf "%.3f", a / b }') (target: 1 + directories)"
