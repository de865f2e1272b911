# shellcheck shell=bash
# start_sshd DIR: start a real OpenSSH sshd on a free loopback port with its
# own host key and a fresh client key authorized, state and log under DIR.
# Sets SSHD_PORT, SSH_KEY (client private key), KNOWN_HOSTS (host key pinned,
# as an operator does once after checking the fingerprint) and SSHD_PID.
# Call it directly, not in $(...): sshd must stay a child of the caller,
# which stops it (kill "$SSHD_PID"; wait "$SSHD_PID") in its own EXIT trap.
start_sshd() {
    local sd=$1 p
    mkdir -p "$sd" /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f "$sd/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$sd/client_key"
    cp "$sd/client_key.pub" "$sd/authorized_keys"
    SSHD_PORT=
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 40000))
        if ! ss -Hltn "sport = :$p" | grep -q .; then SSHD_PORT=$p; break; fi
    done
    [ -n "$SSHD_PORT" ] || { echo "   no free port" >&2; return 1; }
    cat >"$sd/sshd_config" <<CFG
ListenAddress 127.0.0.1
HostKey $sd/host_key
PidFile $sd/sshd.pid
AuthorizedKeysFile $sd/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
CFG
    /usr/sbin/sshd -D -e -f "$sd/sshd_config" -p "$SSHD_PORT" 2>"$sd/sshd.log" &
    SSHD_PID=$!
    for _ in $(seq 100); do
        grep -q "Server listening on" "$sd/sshd.log" && break
        sleep 0.1
    done
    echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1,2 "$sd/host_key.pub")" >"$sd/known_hosts"
    SSH_KEY=$sd/client_key
    KNOWN_HOSTS=$sd/known_hosts
}
