#!/usr/bin/env bash
# sqlite-dump: verified copies of every SQLite database in the week's PVC
# copy (pvc-data/<week> from 20-pvc-copy.sh), or in a small sandbox tree
# made here when that demo did not run. Sourced by scripts/demo with
# $SANDBOX, $BIN, $PUSHGATEWAY_URL and $BACKUP_LOCK_DIR set.
set -euo pipefail

backup="$SANDBOX/backup"
week=$(ls -1d "$backup"/pvc-data/*/ 2>/dev/null | sort | tail -n1 || true)
week=${week%/}
src=${week:-"$SANDBOX/sqlite-demo-src"}

if [ -z "$week" ]; then
    echo "   (no pvc-data week from the pvc-copy demo: building a sample tree)"
    mkdir -p "$src/vaultwarden/vaultwarden-data" "$src/media/jellyfin-config/data/a/b/c"
    db="$SANDBOX/live-vault.db"
    # A writer that stays open: its last 500 rows exist only in the -wal
    # when the files are "snapshotted" (copied) beside it.
    sqlite3 "$db" <<SQL >/dev/null
PRAGMA journal_mode=WAL;
PRAGMA wal_autocheckpoint=0;
CREATE TABLE ciphers(id INTEGER PRIMARY KEY, data BLOB);
INSERT INTO ciphers(data) SELECT randomblob(300) FROM generate_series(1, 200);
PRAGMA wal_checkpoint(TRUNCATE);
INSERT INTO ciphers(data) SELECT randomblob(300) FROM generate_series(1, 500);
.system cp $db $db-wal $db-shm $src/vaultwarden/vaultwarden-data/
SQL
    for s in "" -wal -shm; do mv "$src/vaultwarden/vaultwarden-data/live-vault.db$s" "$src/vaultwarden/vaultwarden-data/db.sqlite3$s"; done
    sqlite3 "$src/media/jellyfin-config/data/a/b/c/library.db" \
        "CREATE TABLE items(x); INSERT INTO items VALUES (1),(2),(3);"
    printf 'not a database\n' >"$src/media/jellyfin-config/data/notes.db"
    ln -s /etc/hostname "$src/media/jellyfin-config/data/escape.db"
fi

wk=$(basename "$src")
[ -n "$week" ] || wk=$(date +%G-W%V)
dest="$backup/sqlite-backup/$wk"
mkdir -p "$backup"
echo "   source $src"
rc=0
# The ledger: the backup root's (BACKUP_ROOT in the configuration file).
"$BIN/sqlite-dump" "$src" --to "$dest" \
    --metrics-file "$SANDBOX/sqlite-dump.prom" || rc=$?
echo "   exit $rc; copies:"
(cd "$dest" && find . -type f -printf '     %p  %s bytes\n' | sort)
if [ -f "$dest/vaultwarden/vaultwarden-data/db.sqlite3" ]; then
    main_only=$(cp "$src/vaultwarden/vaultwarden-data/db.sqlite3" "$SANDBOX/main-only.db" &&
        sqlite3 "$SANDBOX/main-only.db" 'SELECT count(*) FROM ciphers')
    # immutable=1: read the copy without creating -wal/-shm beside it.
    copy=$(sqlite3 "file:$dest/vaultwarden/vaultwarden-data/db.sqlite3?immutable=1" 'SELECT count(*) FROM ciphers')
    note=""
    [ "$main_only" = "$copy" ] || note=" (the rest existed only in the -wal)"
    echo "   vaultwarden rows: main file alone $main_only, verified copy $copy$note"
fi
echo "   ledger entries added: $(grep -c sqlite-backup "$backup/.changed-files" || true)"
"$BIN/sqlite-dump" check -q "$(find "$dest" -type f | head -n1)" --metrics-file "$SANDBOX/sqlite-check.prom" &&
    echo "   check of a copy: integrity ok"
"$BIN/push-metric" --job sqlite-dump --status "$rc" --file "$SANDBOX/sqlite-dump.prom" || true
"$BIN/push-metric" --job sqlite-check --status 0 --file "$SANDBOX/sqlite-check.prom" || true
sed -n 's/^\(sqlite_dump_[a-z_]*\) /   \1 /p' "$SANDBOX/sqlite-dump.prom"
