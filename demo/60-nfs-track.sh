#!/usr/bin/env bash
# nfs-track: the change tracker on a sandbox tree. It is started, files
# appear by every route (nested fresh directories, a tree moved in, a tree
# copied with cp -a, a hostile name), it is stopped with SIGTERM, then
# killed with SIGKILL and restarted with changes made while it was down.
# Sourced by scripts/demo with $SANDBOX, $BIN, $PUSHGATEWAY_URL and
# $BACKUP_LOCK_DIR set.
set -euo pipefail

nt_root="$SANDBOX/nfs-track"
nt_tree="$nt_root/srv/nfs"
nt_disk="$nt_root/backup"
nt_log="$nt_disk/.nfs-changes.log"
nt_prom="$nt_root/nfs-track.prom"
mkdir -p "$nt_tree/immich/library" "$nt_tree/frigate" "$nt_disk" "$nt_root/outside/album/2026/11"
printf 'direct immich\nnever frigate\n' >"$nt_root/skip-list.conf"
# The change log's disk is an initialised backup root (nfs-track refuses
# one without its identity marker).
"$BIN/offsite-sync" init --local --backup-root "$nt_disk" 2>/dev/null
echo photo >"$nt_root/outside/album/2026/11/IMG_0001.jpg"

nt_start() {
    rm -f "$nt_prom"
    "$BIN/nfs-track" --watch "$nt_tree" --log "$nt_log" --state-dir "$nt_root/state" \
        --skip-list "$nt_root/skip-list.conf" --route direct \
        --metrics-file "$nt_prom" --metrics-interval 1s --flush-interval 1s \
        2>>"$nt_root/nfs-track.stderr" &
    nt_pid=$!
    # The metrics file is written once the watches are set up.
    for _ in $(seq 300); do
        [ -s "$nt_prom" ] && return 0
        kill -0 "$nt_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "   nfs-track did not start:" >&2
    cat "$nt_root/nfs-track.stderr" >&2
    return 1
}

nt_start
echo "   tracker up ($(sed -n 's/^nfs_track_watches{backend="\([a-z]*\)"} \(.*\)/\1, \2 watches or marks/p' "$nt_prom"))"
(
    cd "$nt_tree"
    mkdir -p immich/upload/a/b/c && echo x >immich/upload/a/b/c/fresh.jpg
    mv "$nt_root/outside/album" immich/library/moved-album
    mkdir -p "$nt_root/outside/copied/x" && echo y >"$nt_root/outside/copied/x/c.jpg"
    cp -a "$nt_root/outside/copied" immich/library/copied
    printf 'z' >"immich/upload/two
lines.jpg"
    echo swap >immich/upload/.edit.jpg.swp
    echo never >frigate/clip.mp4
)
kill -TERM "$nt_pid"
wait "$nt_pid" || true
echo "   ledger after SIGTERM ($(wc -l <"$nt_log") lines; frigate and the .swp file are not there):"
sed 's/^/     /' "$nt_log"
echo "   full-sync marker (first start, no stamp yet): $(cut -c1-90 "$nt_log.full-sync-needed")"

nt_start
kill -KILL "$nt_pid"
wait "$nt_pid" 2>/dev/null || true
echo down >"$nt_tree/immich/while-down.jpg"
nt_start
kill -TERM "$nt_pid"
wait "$nt_pid" || true
if grep -qx "$nt_tree/immich/while-down.jpg" "$nt_log"; then
    echo "   SIGKILL, a file written while down, restart: logged by the ctime rescan"
else
    echo "   ERROR: the file written while the tracker was down is missing" >&2
    return 1 2>/dev/null || exit 1
fi
grep -E '^nfs_track_(paths_logged|rescans|overflows)_total' "$nt_prom" | sed 's/^/     /'
"$BIN/push-metric" --job nfs-change-tracker --prefix nfs_track_push --status 0 \
    --file "$nt_prom" --gateway "$PUSHGATEWAY_URL" -q &&
    echo "   heartbeat pushed to $PUSHGATEWAY_URL (job nfs-change-tracker)" ||
    echo "   (heartbeat push failed; see above)"
