#!/usr/bin/env bash
# pvc-copy: the newest snapshot of every PVC, mounted read-only in a
# private mount namespace, copied into $SANDBOX/backup/pvc-data/<week>/.
# Uses the emulated host of 10-lvm-snap.sh ($SANDBOX/emu, $SANDBOX/emu-bin)
# when it exists, else builds a small one here (the emulator stands for the
# Proxmox host's LVM, dm-crypt and Kubernetes; mounts and rsync are real).
# Sourced by scripts/demo with $SANDBOX, $BIN, $PUSHGATEWAY_URL and
# $BACKUP_LOCK_DIR set.
set -euo pipefail

emu="$SANDBOX/emu"
emubin="$SANDBOX/emu-bin"
backup="$SANDBOX/backup"
key="$SANDBOX/luks-backup.key"
mkdir -p "$backup"

if [ ! -d "$emu" ] || [ ! -d "$emubin" ]; then
    echo "   (no emulated host from the lvm-snap demo: building one with 3 PVCs)"
    mkdir -p "$emu/images/pve" "$emu/dev/pve" "$emu/mapper" "$emu/tmp" "$emubin"
    for c in lvs lvcreate lvchange kubectl cryptsetup blkid; do ln -sf "$BIN/homelab-emu" "$emubin/$c"; done
    printf 'demo key' >"$key"
    mk() { # lv, source dir, luks?
        local img="$emu/images/pve/$1.img"
        if [ "$3" = luks ]; then
            truncate -s 32M "$emu/images/pve/$1.plain"
            mkfs.ext4 -q -F -d "$2" "$emu/images/pve/$1.plain"
            truncate -s 32M "$img"
            cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
                --luks2-metadata-size 16k --luks2-keyslots-size 256k --key-file "$key" "$img" >/dev/null
        else
            truncate -s 32M "$img"
            mkfs.ext4 -q -F -d "$2" "$img"
        fi
        ln -sf "$img" "$emu/dev/pve/$1"
    }
    t="$SANDBOX/pvc-src"
    mkdir -p "$t/vw/data" "$t/media/library/2026" "$t/notes"
    sqlite3 "$t/vw/data/db.sqlite3" 'PRAGMA journal_mode=WAL; CREATE TABLE ciphers(id INTEGER PRIMARY KEY, data BLOB);
        INSERT INTO ciphers(data) SELECT randomblob(200) FROM generate_series(1, 300);' >/dev/null
    head -c 2000000 /dev/urandom >"$t/media/library/2026/movie.mkv"
    ln "$t/media/library/2026/movie.mkv" "$t/media/library/hardlink.mkv"
    ln -s /etc/shadow "$t/media/library/escape"
    echo "meeting notes" >"$t/notes/todo.txt"
    mk vm-100-pvc-0a1b "$t/vw" luks
    mk vm-101-pvc-2c3d "$t/media" plain
    mk vm-102-pvc-4e5f "$t/notes" plain
    now=$(date +%s)
    lv() { printf '"%s": {"pool": "data", "size": 33554432, "origin": "%s", "tags": [%s], "encrypted": %s, "time": %s}' "$@"; }
    cat >"$emu/lvm.json" <<EOF
{"vgs": {"pve": {"pools": {"data": {"size": 4294967296, "time": $now}},
  "lvs": {$(lv vm-100-pvc-0a1b "" "" true $((now - 86400))),
          $(lv vm-101-pvc-2c3d "" "" false $((now - 86400))),
          $(lv vm-102-pvc-4e5f "" "" false $((now - 86400)))}}}}
EOF
    pv() { printf '{"name": "pvc-%s", "driver": "csi.proxmox.sinextra.dev", "volume_handle": "homelab/pve1/local-lvm/vm-%s", "namespace": "%s", "claim": "%s"}' "$@"; }
    cat >"$emu/k8s.json" <<EOF
{"pvs": [$(pv 0a1b 100-pvc-0a1b vaultwarden vaultwarden-data),
         $(pv 2c3d 101-pvc-2c3d media jellyfin-library),
         $(pv 4e5f 102-pvc-4e5f notes notes-data)]}
EOF
    stamp=$(date +%Y%m%d_%H%M)
    for o in vm-100-pvc-0a1b vm-101-pvc-2c3d vm-102-pvc-4e5f; do
        HOMELAB_EMU_STATE="$emu" "$emubin/lvcreate" -s -kn -n "${o}_snap_$stamp" \
            --addtag backup-pipeline.lvm-snap "pve/$o" >/dev/null
    done
fi
[ -f "$key" ] || key="$emu/luks.key"

run_copy() {
    # The backup root and the mapping cache: from the configuration file.
    HOMELAB_EMU_STATE="$emu" PATH="$emubin:$PATH" "$BIN/pvc-copy" \
        --mapper-dir "$emu/mapper" \
        --luks-key "$key" --work-dir "$SANDBOX" --metrics-file "$SANDBOX/pvc-copy.prom" "$@"
}

echo "   plan (--dry-run):"
run_copy --dry-run 2>&1 | sed 's/^/     /'
# A bare directory (what an unmounted disk leaves at its mountpoint) has no
# identity marker: refused before anything is written there.
bare="$SANDBOX/bare-mountpoint"
mkdir -p "$bare"
brc=0
HOMELAB_EMU_STATE="$emu" PATH="$emubin:$PATH" "$BIN/pvc-copy" --backup-root "$bare" \
    --allow-unmounted-root --mapper-dir "$emu/mapper" --luks-key "$key" --work-dir "$SANDBOX" \
    2>"$SANDBOX/bare-mountpoint.err" || brc=$?
echo "   a bare directory as backup root: exit $brc, $(ls -A "$bare" | wc -l) entries written there:"
sed 's/^/     /' "$SANDBOX/bare-mountpoint.err"
rc=0
run_copy -q || rc=$?
week=$("$BIN/pvc-copy" current-week)
echo "   exit $rc; $backup/pvc-data/$week:"
(cd "$backup/pvc-data/$week" && find . -mindepth 2 -maxdepth 2 -printf '     %p\n' | sort)
src=$(ls "$backup/pvc-data/$week"/*/.*.source | head -n1)
echo "   source record $(basename "$src"): $(tr -d '\n ' <"$src" | cut -c1-110)..."
lines1=$(wc -l <"$backup/.changed-files")
echo "   ledger: $lines1 entries after the first copy"
# Same snapshots again: every file is hardlinked to the copy just made, so
# the ledger only gets the source records.
run_copy -q || rc=$?
echo "   second run: $(($(wc -l <"$backup/.changed-files") - lines1)) new ledger entries (the .source records: no file changed)"
mk=$(find "$backup/pvc-data/$week" -name '*.mkv' -printf '%n ' | head -c 20)
echo "   link counts of the media files: $mk(unchanged files share one inode)"
echo "   mounts left in this namespace: $(grep -c "$SANDBOX" /proc/self/mountinfo || true)"
sed -n 's/^\(pvc_copy_pvcs{[^}]*}\|daily_backup_bytes_synced\|pvc_copy_duration_seconds\) /   \1 /p' "$SANDBOX/pvc-copy.prom"
"$BIN/push-metric" --job daily-backup --prefix daily_backup --status "$([ $rc -eq 0 ] && echo 0 || echo 1)" \
    --file "$SANDBOX/pvc-copy.prom" || true
[ "$rc" -eq 0 ]
