#!/usr/bin/env bash
# lvm-snap: thin snapshots of every PVC volume, on an emulated Proxmox host.
#
# Leaves for the later demo steps (pvc-copy reuses them):
#   $SANDBOX/emu       the emulated host's state (HOMELAB_EMU_STATE): thin pool
#                      pve/data with 3 PVC LVs (ext4 images; vm-100-pvc-0a1b is
#                      LUKS, key $SANDBOX/emu/luks.key) and today's snapshots
#   $SANDBOX/emu-bin   lvs, lvcreate, lvremove, lvrename, lvchange, kubectl,
#                      cryptsetup, blkid: symlinks to $BIN/homelab-emu; put it
#                      first on PATH
# The emulator stands for what cannot run here (LVM needs device-mapper, and
# there is no cluster); everything else is real. Sourced by scripts/demo with
# $SANDBOX, $BIN, $PUSHGATEWAY_URL and $BACKUP_LOCK_DIR set.
set -euo pipefail

emu="$SANDBOX/emu"
emubin="$SANDBOX/emu-bin"
mkdir -p "$emu/images/pve" "$emu/dev/pve" "$emu/mapper" "$emu/tmp" "$emubin"
for c in lvs lvcreate lvremove lvrename lvchange kubectl cryptsetup blkid \
    lvm vgs pvs vgchange vgcreate lvextend lvresize lvconvert lvdisplay dmsetup; do
    ln -sf "$BIN/homelab-emu" "$emubin/$c"
done

# --- The host: 3 PVC volumes with some files, and the cluster's PVs.
key="$emu/luks.key"
printf 'demo key' >"$key"
src="$SANDBOX/lvm-snap-src"
mkdir -p "$src/vw/data" "$src/media/library/2026" "$src/notes"
sqlite3 "$src/vw/data/db.sqlite3" 'PRAGMA journal_mode=WAL; CREATE TABLE ciphers(id INTEGER PRIMARY KEY, data BLOB);
    INSERT INTO ciphers(data) SELECT randomblob(200) FROM generate_series(1, 300);' >/dev/null
head -c 2000000 /dev/urandom >"$src/media/library/2026/movie.mkv"
ln -f "$src/media/library/2026/movie.mkv" "$src/media/library/hardlink.mkv"
ln -sfn /etc/shadow "$src/media/library/escape"
echo "meeting notes" >"$src/notes/todo.txt"
mkimg() { # lv, source dir, luks|plain
    local img="$emu/images/pve/$1.img"
    if [ "$3" = luks ]; then
        truncate -s 32M "$emu/images/pve/$1.plain"
        mkfs.ext4 -q -F -d "$2" "$emu/images/pve/$1.plain"
        truncate -s 32M "$img"
        cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
            --luks2-metadata-size 16k --luks2-keyslots-size 256k --key-file "$key" "$img" >/dev/null 2>&1
    else
        truncate -s 32M "$img"
        mkfs.ext4 -q -F -d "$2" "$img"
    fi
    ln -sf "$img" "$emu/dev/pve/$1"
}
mkimg vm-100-pvc-0a1b "$src/vw" luks
mkimg vm-101-pvc-2c3d "$src/media" plain
mkimg vm-102-pvc-4e5f "$src/notes" plain
now=$(date +%s)
lv() { printf '"%s": {"pool": "data", "size": 33554432, "encrypted": %s, "time": %s}' "$1" "$2" $((now - 86400)); }
cat >"$emu/lvm.json" <<EOF
{"vgs": {"pve": {"pools": {"data": {"size": 4294967296, "time": $now}},
  "lvs": {$(lv vm-100-pvc-0a1b true), $(lv vm-101-pvc-2c3d false),
          $(lv vm-102-pvc-4e5f false)}}}}
EOF
pv() { printf '{"name": "pvc-%s", "driver": "csi.proxmox.sinextra.dev", "volume_handle": "homelab/pve1/local-lvm/vm-%s", "namespace": "%s", "claim": "%s"}' "$@"; }
cat >"$emu/k8s.json" <<EOF
{"pvs": [$(pv 0a1b 100-pvc-0a1b vaultwarden vaultwarden-data),
         $(pv 2c3d 101-pvc-2c3d media jellyfin-library),
         $(pv 4e5f 102-pvc-4e5f notes notes-data)]}
EOF
echo "   emulated host: 3 PVC LVs in thin pool pve/data, their PVs in the emulated cluster"

snap() {
    # State dir and mapping cache: from the configuration file.
    HOMELAB_EMU_STATE="$emu" PATH="$emubin:$PATH" "$BIN/lvm-snap" "$@"
}

# --- Two earlier nights, replayed with the injected clock (--now).
snap -q create --now "@$((now - 4 * 86400))"
snap -q create --now "@$((now - 2 * 86400))"

# --- Namespace exclusions (dbaas,monitoring by default), shown on a dry run.
echo "   lvm-snap create --dry-run --exclude-namespace notes:"
snap create --dry-run --exclude-namespace notes 2>&1 | grep -E 'excluded|would run' | sed 's/^/     /'

# --- Tonight's run, pushed like the unit does (job lvm-pvc-snapshot).
echo "   lvm-snap create:"
rc=0
snap create --metrics-file "$SANDBOX/lvm-snap.prom" 2>&1 | sed 's/^/     /' || rc=$?
"$BIN/push-metric" -q --job lvm-pvc-snapshot --prefix lvm_snapshot --status "$([ "$rc" = 0 ] && echo 0 || echo 1)" \
    --file "$SANDBOX/lvm-snap.prom" || echo "   (push failed)"
echo "   lvm-snap list:"
snap list | sed 's/^/     /'

# --- Retention: what would go and why, then the prune unit's run.
# (--json keys come sorted: keep, name, reason, one object per candidate.)
echo "   lvm-snap prune --dry-run --json (keep 3 days), as keep/DROP name reason:"
snap -q prune --dry-run --json |
    sed -n 's/^ *"keep": \(.*\),$/\1/p; s/^ *"name": "\(.*\)",$/\1/p; s/^ *"reason": "\(.*\)",$/\1/p' |
    paste - - - | awk -F'\t' '{ printf "     %-5s %-36s %s\n", ($1 == "true" ? "keep" : "DROP"), $2, $3 }'
rc=0
snap -q prune --metrics-file "$SANDBOX/lvm-snap-prune.prom" >/dev/null || rc=$?
"$BIN/push-metric" -q --job lvm-pvc-snapshot-prune --prefix lvm_snapshot_prune \
    --status "$([ "$rc" = 0 ] && echo 0 || echo 1)" --file "$SANDBOX/lvm-snap-prune.prom" || echo "   (push failed)"
# --- A restore's plan (nothing changes on a dry run; --yes or a typed
# "yes" does it, and `restore --recover` undoes one cut short by SIGKILL).
newest=$(snap list | awk '$2 ~ /^vm-102-pvc-4e5f_snap_/ { n = $2 } END { print n }')
echo "   lvm-snap restore vm-102-pvc-4e5f $newest --dry-run:"
snap restore vm-102-pvc-4e5f "$newest" --dry-run 2>&1 | sed 's/^/     /'
echo "   lvm-snap pool:"
snap pool | sed 's/^/     /'
echo "   emulated host left at $emu (PATH dir $emubin) for pvc-copy"
