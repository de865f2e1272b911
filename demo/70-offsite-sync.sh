#!/usr/bin/env bash
# offsite-sync: the sandbox NAS is a real sshd on loopback with a directory
# under $SANDBOX. `offsite-sync init` gives the NAS destinations their
# identity markers once. The first run is a full pass (none on record); then new
# entries arrive by the ledgers only, a run against an unreachable NAS
# fails with every entry kept, and the next run delivers them. Ends with
# the NAS trees and `offsite-sync coverage`. Sourced by scripts/demo with
# $SANDBOX, $BIN, $PUSHGATEWAY_URL and $BACKUP_LOCK_DIR set; uses what
# demo/50-nfs-mirror.sh left (backup root, NFS trees, skip list).
set -euo pipefail

backup="$SANDBOX/backup"
nfs="$SANDBOX/srv/nfs"
nfs_ssd="$SANDBOX/srv/nfs-ssd"
skip="$SANDBOX/skip-list.conf"
nas="$SANDBOX/nas"
sd="$SANDBOX/nas-sshd"
mkdir -p "$backup" "$nfs/immich" "$nfs_ssd" "$nas" "$sd" /run/sshd
[ -f "$skip" ] || printf 'direct immich\nnever frigate\n' >"$skip"

# shellcheck source=scripts/lib/sshd.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/sshd.sh"
start_sshd "$sd"
port=$SSHD_PORT nas_pid=$SSHD_PID
# The direct route's tracker on both roots: coverage counts `direct` as
# carried only while nfs-track records watching them.
track_state="$SANDBOX/nfs-track-state"
# Both roots, the ledger, the skip list and the state dir: from the configuration file.
"$BIN/nfs-track" --flush-interval 1s \
    2>"$SANDBOX/nfs-track-roots.stderr" &
track_pid=$!
trap 'kill "$nas_pid" "$track_pid" 2>/dev/null || true; wait "$nas_pid" "$track_pid" 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    [ -s "$track_state/last-watching" ] && break
    sleep 0.1
done
echo "   NAS: sshd on 127.0.0.1:$port, storage $nas; nfs-track watching both roots"

osync() {
    local sub=$1
    shift
    # The caller's flags come last: a repeated flag overrides the one before.
    "$BIN/offsite-sync" "$sub" --remote root@127.0.0.1 --ssh-port "$port" \
        --ssh-key "$sd/client_key" --known-hosts "$sd/known_hosts" \
        --keepalive 2s --io-timeout 20s --connect-timeout 5s \
        --metrics-file "$SANDBOX/offsite-sync.prom" "$@"
}
push() {
    "$BIN/push-metric" --job offsite-backup-sync --prefix offsite_sync --status "$1" \
        --file "$SANDBOX/offsite-sync.prom" >/dev/null || true
}

echo "   offsite-sync init (once: identity markers of the backup root and the NAS destinations):"
osync init 2>&1 | sed 's/^/     /'

echo "   first run (no full pass on record -> full pass, guarded):"
osync all --max-delete off 2>/dev/null | sed 's/^/     /'
push 0

echo "   new entries by the ledgers; the NAS is unreachable:"
echo "new config" >"$backup/pfsense-demo-$(date +%s).xml"
new_leg1=$(cd "$backup" && ls pfsense-demo-*.xml | tail -n1)
"$BIN/nfs-mirror" >/dev/null 2>&1 || true
echo "new photo" >"$nfs/immich/upload/IMG_0002.jpg"
printf '%s\n' "$new_leg1" >>"$backup/.changed-files"
printf '%s\n' "$nfs/immich/upload/IMG_0002.jpg" "$nfs/immich/upload/gone.jpg" >>"$backup/.nfs-changes.log"
set +e
osync all --ssh-port 1 >/dev/null 2>"$SANDBOX/offsite.err"
rc=$?
set -e
push 1
# Refused before consuming (the NAS markers are checked first): the entries
# wait in the ledgers themselves.
echo "     exit $rc; pending: $(osync status --no-nas | grep 'pending line' | grep -vc ': 0 pending') ledger(s) kept for retry"
osync all 2>/dev/null | sed 's/^/     /'
push 0
echo "   the NAS now holds:"
# Names quoted (one may hold a newline, as tenants' names do).
(cd "$nas" && find . -type f ! -path './pve-backup/.*' ! -name .backup-pipeline-id -print0 | sort -z |
    xargs -0 /usr/bin/printf '     %q\n' | head -n 30)
echo "   offsite-sync coverage (every directory on a leg that runs, or exit 3 naming it):"
osync coverage 2>&1 | sed 's/^/     /'
echo "   offsite-sync status:"
osync status 2>&1 | sed 's/^/     /'
