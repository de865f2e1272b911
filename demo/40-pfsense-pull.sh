#!/usr/bin/env bash
# pfsense-pull: a real sshd on loopback stands for the firewall, serving a
# fake pfSense tree under $SANDBOX. One good pull (config.xml + a checked
# full tar), then a firewall that answers with an HTML login page: refused,
# and the good copy stays the newest. Sourced by scripts/demo (in a
# subshell) with $SANDBOX, $BIN, $PUSHGATEWAY_URL and $BACKUP_LOCK_DIR set.
set -euo pipefail

fw="$SANDBOX/fake-pfsense"
sd="$SANDBOX/pfsense-sshd"
backup="$SANDBOX/backup"
mkdir -p "$fw/cf/conf" "$fw/etc" "$fw/var/db/rrd" "$fw/var/run" "$fw/tmp" "$fw/dev" "$sd" "$backup" /run/sshd
{
    printf '<?xml version="1.0"?>\n<pfsense>\n\t<version>23.3</version>\n\t<system><hostname>fw</hostname><domain>home.invalid</domain></system>\n\t<filter>\n'
    for i in $(seq 1 60); do
        printf '\t\t<rule><tracker>%s</tracker><type>pass</type><interface>lan</interface><descr><![CDATA[rule %s]]></descr></rule>\n' $((1700000000 + i)) "$i"
    done
    printf '\t</filter>\n</pfsense>\n'
} >"$fw/cf/conf/config.xml"
echo "2.7.2-RELEASE" >"$fw/etc/version"
head -c 200000 /dev/zero >"$fw/var/db/rrd/wan.rrd"
echo "runtime state, excluded" >"$fw/var/run/dmesg.boot"
echo "temp, excluded" >"$fw/tmp/session"

# --- The "firewall": sshd with its own host key, our client key authorized.
# shellcheck source=scripts/lib/sshd.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/sshd.sh"
start_sshd "$sd"
port=$SSHD_PORT sshd_pid=$SSHD_PID
trap 'kill "$sshd_pid" 2>/dev/null || true; wait "$sshd_pid" 2>/dev/null || true' EXIT
echo "   firewall: sshd on 127.0.0.1:$port (pid $sshd_pid), tree $fw"

pull() {
    "$BIN/pfsense-pull" --dest "$backup/pfsense" --ssh "root@127.0.0.1" -p "$port" \
        --ssh-key "$sd/client_key" --known-hosts "$sd/known_hosts" \
        --remote-config "$fw/cf/conf/config.xml" --tar-root "$fw" \
        --metrics-file "$SANDBOX/pfsense-pull.prom" --timeout 60s "$@"
}

rc=0
pull --full-tar always || rc=$?
echo "   good pull: exit $rc"
(cd "$backup/pfsense" && find . -type f -printf '     %p  %s bytes\n' | sort)
"$BIN/push-metric" --job pfsense-backup --prefix backup --status "$rc" \
    --file "$SANDBOX/pfsense-pull.prom" || true

# --- The firewall's web GUI answers instead of config.xml: refused.
cp "$fw/cf/conf/config.xml" "$SANDBOX/config.good"
printf '<!DOCTYPE html>\n<html><head><title>pfSense - Login</title></head></html>\n' >"$fw/cf/conf/config.xml"
tomorrow=$(date -d tomorrow +%F)
rc=0
pull --full-tar never --today "$tomorrow" 2>"$SANDBOX/pfsense-bad.log" || rc=$?
echo "   bad reply on $tomorrow: exit $rc, $(grep -m1 'rejected' "$SANDBOX/pfsense-bad.log" | sed 's/.*rejected: /rejected: /')"
newest=$(cd "$backup/pfsense" && find . -name 'config-*.xml' | sort -t- -k2 | tail -n1)
echo "   newest config copy is still $newest"
"$BIN/push-metric" --job pfsense-backup --prefix backup --status "$([ "$rc" = 0 ] && echo 0 || echo 1)" \
    --file "$SANDBOX/pfsense-pull.prom" || true
echo "   ledger: $(grep -c '^pfsense/' "$backup/.changed-files") pfsense entries"
sed -n 's/^\(pfsense_[a-z_]*\) /   \1 /p' "$SANDBOX/pfsense-pull.prom"
