#!/usr/bin/env bash
# Full filesystem tar of a firewall over SSH: `pfsense-pull --full-tar
# always` (stream to .partial, then decode the whole gzip and list every tar
# entry before the rename) against what the old script did, measured in the
# same run on the same loopback sshd:
#   ssh HOST 'tar czf - --exclude=... /' > pfsense-full.tar.gz
# Prints the ratio (the price of the check). Warm cache, best of 3.
# Env: MB (size of the fake firewall tree, default 200), BIN (release binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${MB:-200}
if [ -z "${BIN:-}" ]; then
    target=$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    BIN="$target/release"
fi
tool="$BIN/pfsense-pull"
[ -x "$tool" ] || { echo "bench: $tool is not built (cargo build --release -p pfsense-pull)" >&2; exit 1; }

work=$(mktemp -d /tmp/pfsense-bench.XXXXXX)
sshd_pid=
cleanup() {
    if [ -n "$sshd_pid" ]; then kill "$sshd_pid" 2>/dev/null || true; wait "$sshd_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
fw="$work/fw" sd="$work/sshd" out="$work/backup"
mkdir -p "$fw/cf/conf" "$fw/usr/local/lib" "$fw/var/db" "$sd" "$out" /run/sshd

# A firewall-like tree: half compressible text, half binaries (random), in
# files of 64 KiB to 4 MiB, plus config.xml.
printf '<?xml version="1.0"?>\n<pfsense><version>23.3</version></pfsense>\n' >"$fw/cf/conf/config.xml"
i=0; total=0
while [ "$total" -lt $((MB * 1024 * 1024)) ]; do
    size=$(( (64 + (i * 977) % 4032) * 1024 ))
    if [ $((i % 2)) -eq 0 ]; then
        # yes dies of SIGPIPE when head has enough: not an error here.
        (set +o pipefail; yes "log line $i: kernel: pf: state table entry expired for 192.0.2.$((i % 250))" |
            head -c "$size" >"$fw/var/db/f$i.log")
    else
        head -c "$size" /dev/urandom >"$fw/usr/local/lib/f$i.so"
    fi
    total=$((total + size)); i=$((i + 1))
done
echo "   tree: $i files, $((total / 1024 / 1024)) MiB"

# shellcheck source=scripts/lib/sshd.sh
source scripts/lib/sshd.sh
start_sshd "$sd"
port=$SSHD_PORT sshd_pid=$SSHD_PID
ssh_opts=(-o BatchMode=yes -o UserKnownHostsFile="$sd/known_hosts" -o StrictHostKeyChecking=yes -i "$sd/client_key" -p "$port")

now() { date +%s.%N; }
best() { printf '%s\n' "$@" | sort -g | head -n1; }

base=() ours=()
for run in 1 2 3; do
    rm -rf "$out"/*
    t0=$(now)
    ssh "${ssh_opts[@]}" root@127.0.0.1 \
        "tar czf - --exclude=$fw/dev --exclude=$fw/proc --exclude=$fw/tmp --exclude=$fw/var/run $fw" \
        >"$out/plain.tar.gz" 2>/dev/null
    t1=$(now)
    "$tool" -q --dest "$out/pfsense" --ssh root@127.0.0.1 -p "$port" --ssh-key "$sd/client_key" \
        --known-hosts "$sd/known_hosts" --remote-config "$fw/cf/conf/config.xml" --tar-root "$fw" \
        --full-tar always --timeout 30m
    t2=$(now)
    base+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')")
    ours+=("$(awk -v a="$t1" -v b="$t2" 'BEGIN{printf "%.3f", b-a}')")
done
b=$(best "${base[@]}") o=$(best "${ours[@]}")
size=$(stat -c %s "$out"/pfsense/*/pfsense-full-*.tar.gz)
echo "   ssh + tar czf (old script):        ${b}s"
echo "   pfsense-pull (tar + full check):   ${o}s  ($((size / 1024 / 1024)) MiB archive)"
echo "   ratio pfsense-pull / plain: $(awk -v o="$o" -v b="$b" 'BEGIN{printf "%.2f", o/b}')"
