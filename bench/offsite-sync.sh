#!/usr/bin/env bash
# offsite-sync step 1 over a loopback sshd (the NAS), measured in one run
# against the standard tool on the same tree and the same NAS:
#   1. incremental step 1 sending CHANGED changed files of a FILES-file tree
#      (from the ledger) vs a full `rsync -a --delete` scan of the tree that
#      sends the same changes; prints the ratio (target: <= 1/50, and flat as
#      FILES grows);
#   2. a second week (hard links of the first, CHANGED files rewritten, every
#      file of the week in the ledger as pvc-copy writes it): NAS bytes used
#      by the new week vs the changed bytes (target: about 1).
# The step 1 timing includes what a real run does besides the transfer: the
# ssh handshake and the NAS capacity probe (a second ssh connection).
# New week directories cost their own directory blocks on the NAS (counted
# in the growth; about 32 KiB per 1000 entries).
# Env: FILES (default 300000), CHANGED (default 1000), BIN (release binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-300000}
CHANGED=${CHANGED:-1000}
if [ -z "${BIN:-}" ]; then
    target=$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    BIN="$target/release"
fi
tool="$BIN/offsite-sync"
[ -x "$tool" ] || { echo "bench: $tool is not built (cargo build --release -p offsite-sync)" >&2; exit 1; }

work=$(mktemp -d /tmp/offsite-bench.XXXXXX)
sshd_pid=
cleanup() {
    if [ -n "$sshd_pid" ]; then kill "$sshd_pid" 2>/dev/null || true; wait "$sshd_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
root="$work/backup" nas="$work/nas" sd="$work/sshd"
mkdir -p "$root" "$nas" "$sd" /run/sshd "$work/lock"
export BACKUP_LOCK_DIR="$work/lock"

# --- The NAS: sshd on a free loopback port, our key authorized.
# shellcheck source=scripts/lib/sshd.sh
source scripts/lib/sshd.sh
start_sshd "$sd"
port=$SSHD_PORT sshd_pid=$SSHD_PID
ssh_e="ssh -o BatchMode=yes -o UserKnownHostsFile=$sd/known_hosts -o StrictHostKeyChecking=yes -i $sd/client_key -p $port"

# --- A tree of FILES files of 512 bytes in one week, 1000 per directory.
week1="$root/pvc-data/2026-W47"
echo "building $FILES files..."
dirs=$(( (FILES + 999) / 1000 ))
for d in $(seq 1 "$dirs"); do
    dir="$week1/ns/pvc$d"
    mkdir -p "$dir"
    n=$(( FILES - (d - 1) * 1000 )); [ "$n" -le 1000 ] || n=1000
    # n files of 512 random bytes, f0000..f0999 (split is much faster than a shell loop).
    head -c $(( n * 512 )) /dev/urandom | split -b 512 -d -a 4 - "$dir/f"
done
rsync -a "$root/" "$nas/pve-backup/"
mkdir -p "$root/.offsite-sync"
date +%s >"$root/.offsite-sync/last-full-step1"

osync() {
    "$tool" step1 -q --remote root@127.0.0.1 --ssh-port "$port" --ssh-key "$sd/client_key" \
        --known-hosts "$sd/known_hosts" --backup-root "$root" --pve-dest "$nas/pve-backup" \
        --full never "$@" >/dev/null
}
# Rewrite CHANGED files (new content, one byte longer) and list them.
change() { # tag
    local i=0 d f
    : >"$work/changed.list"
    while [ "$i" -lt "$CHANGED" ]; do
        d=$(( i % dirs + 1 )); printf -v f %04d $(( i / dirs ))
        if [ -f "$week1/ns/pvc$d/f$f" ]; then
            printf 'changed %s %d\n' "$1" "$i" >"$week1/ns/pvc$d/f$f"
            echo "pvc-data/2026-W47/ns/pvc$d/f$f" >>"$work/changed.list"
        fi
        i=$((i + 1))
    done
}
secs() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN{print e - s}'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN{print (b > 0 ? a / b : 0)}'; }

change a
cat "$work/changed.list" >>"$root/.changed-files"
t_inc=$(secs osync)
change b
t_full=$(secs rsync -a --delete -e "$ssh_e" "$root/pvc-data/" "root@127.0.0.1:$nas/pve-backup/pvc-data/")
printf 'incremental step 1 (%d changed of %d files): %.2f s\n' "$CHANGED" "$FILES" "$t_inc"
printf 'full rsync -a --delete scan, same changes:    %.2f s\n' "$t_full"
printf 'ratio incremental/full: %.4f (target <= 0.02)\n' "$(div "$t_inc" "$t_full")"

# --- Second week: hard links of the first (as pvc-copy's --link-dest makes
# them), CHANGED files rewritten, the whole week in the ledger.
week2="$root/pvc-data/2026-W48"
cp -al "$week1" "$week2"
changed_bytes=0
i=0
while [ "$i" -lt "$CHANGED" ]; do
    d=$(( i % dirs + 1 )); printf -v f %04d $(( i / dirs ))
    if [ -f "$week2/ns/pvc$d/f$f" ]; then
        rm "$week2/ns/pvc$d/f$f"
        head -c 4096 /dev/urandom >"$week2/ns/pvc$d/f$f"
        changed_bytes=$((changed_bytes + 4096))
    fi
    i=$((i + 1))
done
(cd "$root" && find pvc-data/2026-W48 -type f) >>"$root/.changed-files"
before=$(du -sb "$nas" | cut -f1)
t_week=$(secs osync)
after=$(du -sb "$nas" | cut -f1)
grown=$((after - before))
printf 'second week: %.2f s; NAS grew by %d bytes for %d changed bytes: ratio %.2f (target ~1; a plain copy would be %d)\n' \
    "$t_week" "$grown" "$changed_bytes" "$(div "$grown" "$changed_bytes")" "$(du -sb "$week2" | cut -f1)"
