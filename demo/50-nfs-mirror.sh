#!/usr/bin/env bash
# nfs-mirror: leg 1 of the NFS backup on a sandbox NFS root. Routes come
# from the skip list (immich direct, frigate never); other jobs' trees and
# the state files in the backup root are never touched; the ledger gets
# exactly what was sent; an emptied tree is refused (exit 5), nothing
# deleted. Leaves $SANDBOX/srv/nfs, $SANDBOX/srv/nfs-ssd and
# $SANDBOX/skip-list.conf for demo/70-offsite-sync.sh. Sourced by
# scripts/demo with $SANDBOX, $BIN, $PUSHGATEWAY_URL and $BACKUP_LOCK_DIR set.
set -euo pipefail

nfs="$SANDBOX/srv/nfs"
backup="$SANDBOX/backup"
skip="$SANDBOX/skip-list.conf"
mkdir -p "$nfs/nextcloud/data/alice" "$nfs/calibre" "$nfs/immich/upload" "$nfs/frigate" \
    "$nfs/servarr/downloads/f1-replays" "$SANDBOX/srv/nfs-ssd/immich/thumbs" "$backup/vzdump"
printf 'direct immich\nnever frigate\nnever servarr/downloads/f1-replays\n' >"$skip"
echo "report" >"$nfs/nextcloud/data/alice/report.odt"
echo "tenant name" >"$nfs/nextcloud/data/alice/$(printf 'new\nline')"
echo "dash" >"$nfs/nextcloud/data/alice/-rf"
sqlite3 "$nfs/calibre/metadata.db" 'PRAGMA journal_mode=WAL; CREATE TABLE books(t); INSERT INTO books VALUES ("x");' >/dev/null
head -c 300000 /dev/urandom >"$nfs/immich/upload/IMG_0001.jpg"
head -c 100000 /dev/urandom >"$SANDBOX/srv/nfs-ssd/immich/thumbs/IMG_0001.webp"
echo "clip" >"$nfs/frigate/cam1.mp4"
echo "race" >"$nfs/servarr/downloads/f1-replays/r1.mkv"
echo "cfg" >"$nfs/servarr/config.xml"
echo "vm image of another job" >"$backup/vzdump/vm-100.vma.zst"
: >"$backup/.changed-files.lock"

mirror() {
    # Roots, backup root and skip list: from the configuration file.
    "$BIN/nfs-mirror" --metrics-file "$SANDBOX/nfs-mirror.prom" "$@"
}
echo "   first run:"
mirror | sed 's/^/     /'
"$BIN/push-metric" --job nfs-mirror --status 0 --file "$SANDBOX/nfs-mirror.prom" >/dev/null || true
echo "   ledger $(wc -l <"$backup/.changed-files") line(s); vzdump/ and .changed-files.lock untouched: $(ls "$backup/vzdump") $(test -e "$backup/.changed-files.lock" && echo present)"

echo "   nextcloud emptied (an unmounted volume): the run is refused"
mv "$nfs/nextcloud" "$SANDBOX/nextcloud.away"
mkdir "$nfs/nextcloud"
set +e
mirror >/dev/null 2>"$SANDBOX/nfs-mirror.err"
rc=$?
set -e
echo "     exit $rc: $(tail -n1 "$SANDBOX/nfs-mirror.err")"
"$BIN/push-metric" --job nfs-mirror --status 1 --file "$SANDBOX/nfs-mirror.prom" >/dev/null || true
rmdir "$nfs/nextcloud"
mv "$SANDBOX/nextcloud.away" "$nfs/nextcloud"
echo "     mirror still holds: $(ls "$backup/nextcloud/data/alice" | tr '\n' ' ')"
mirror >/dev/null
"$BIN/push-metric" --job nfs-mirror --status 0 --file "$SANDBOX/nfs-mirror.prom" >/dev/null || true

echo "   host configuration copy (nfs-mirror config):"
mkdir -p "$SANDBOX/etc/pve"
echo "dir: local" >"$SANDBOX/etc/pve/storage.cfg"
"$BIN/nfs-mirror" config --item "$SANDBOX/etc/pve" 2>&1 | sed 's/^/     /'
