#!/usr/bin/env bash
# Runs the firmware-style client (embassy executor + embassy-net on a TAP
# device + the omega-tv-sync-embassy transport) against a server, entirely
# inside a private network namespace, and checks the outcome.
#
# What it does:
#   1. builds the `embassy-client` example, the Constellation server
#      (`cargo build --release -p constellation`) and the test server;
#   2. creates network namespace $NETNS with its loopback up and a TAP device
#      $TAP carrying $HOST_ADDR/24 (the kernel's end of the link; the client's
#      embassy-net stack is the other end, with $DEVICE_ADDR/24);
#   3. enrols two device ids (`constellation device add`, which prints each
#      key once), writes the TLS PSK of the second (`constellation device
#      tls-psk`, ID:HEX) to a mode-0600 file, writes a random admin token to
#      a mode-0600 file, and starts `constellation serve` inside the
#      namespace (authentication on), bound to $HOST_ADDR:$PORT, its admin
#      listener on $HOST_ADDR:$ADMIN_PORT with that token, no minimum sync
#      interval (the client syncs back to back), with a fresh redb file in a
#      temporary directory;
#   4. runs the client inside the namespace for $SYNCS syncs of the real
#      sync client over plain HTTP, every request signed with the first key
#      (patterns drifting between syncs), bounded in time ($CLIENT_TIMEOUT
#      seconds); the client then reads the server's state back from the
#      admin listener (GET /api/v1/devices/{id}/patterns, bearer token) and checks that the server holds
#      exactly its acked revisions and codes;
#   5. starts stunnel in the namespace as a TLS 1.3 PSK terminator on
#      $HOST_ADDR:$TLS_PORT in front of the server, and runs the client again
#      as the second device with the `tls` transport: a handshake with a
#      wrong key must fail (`Error::Tls`), then $SYNCS syncs and the same
#      read-back, all through TLS;
#   6. runs the transport's HTTP edge cases against `embassy-test-server`
#      ($ROUNDS rounds: echo, chunked, oversize, 503, refused connection);
#      with SERVER=test only these;
#   passes only if every client run exits 0 (every check passed);
#   7. always stops the server and stunnel and deletes the namespace (trap),
#      which also removes the TAP device.
# No route leaves the namespace: it has no other interface, so traffic never
# reaches the host or any network.
#
# Needs root and /dev/net/tun. Where /dev/net/tun is absent it prints a loud
# SKIPPED banner and exits 0; with REQUIRE_TUN=1 it fails instead.
#
# Variables (defaults in brackets):
#   SERVER          constellation or test [constellation]
#   SERVER_CMD      test server command line, run inside the namespace; `{ADDR}`
#                   is replaced by $HOST_ADDR:$PORT
#                   [target/debug/embassy-test-server {ADDR} 64 60]
#   CLIENT_CMD      client command line [target/debug/embassy-client]
#   SYNCS           syncs against Constellation [5]
#   ROUNDS          HTTP check rounds against the test server [3]
#   CLIENT_TIMEOUT  hard bound on the client run, seconds [60]
#   NETNS TAP HOST_ADDR DEVICE_ADDR PORT   [omega-sync-$$ omtap0 10.77.0.1 10.77.0.2 8080]
#   TLS_PORT        the TLS terminator's port [8443]
#   ADMIN_PORT      the server's admin listener port [8081]
#   DEVICE TLS_DEVICE   device ids [stb-netns-embassy-0001 stb-netns-embassy-tls-0002]
#   STUNNEL         the stunnel binary [stunnel4 or stunnel on PATH]
#   CARGO_PROFILE   debug or release [debug]
set -euo pipefail
cd "$(dirname "$0")/.."

NETNS=${NETNS:-omega-sync-$$}
TAP=${TAP:-omtap0}
HOST_ADDR=${HOST_ADDR:-10.77.0.1}
DEVICE_ADDR=${DEVICE_ADDR:-10.77.0.2}
PORT=${PORT:-8080}
ROUNDS=${ROUNDS:-3}
SYNCS=${SYNCS:-5}
SERVER=${SERVER:-constellation}
CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-60}
TLS_PORT=${TLS_PORT:-8443}
ADMIN_PORT=${ADMIN_PORT:-8081}
DEVICE=${DEVICE:-stb-netns-embassy-0001}
TLS_DEVICE=${TLS_DEVICE:-stb-netns-embassy-tls-0002}
CARGO_PROFILE=${CARGO_PROFILE:-debug}
TARGET_DIR=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')}
BIN="$TARGET_DIR/$CARGO_PROFILE"
SERVER_CMD=${SERVER_CMD:-"$BIN/embassy-test-server {ADDR} 64 60"}
CLIENT_CMD=${CLIENT_CMD:-"$BIN/embassy-client"}

banner() { printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n!!! %s\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n' "$*" >&2; }

if [ ! -c /dev/net/tun ]; then
    banner "netns-sync: SKIPPED: /dev/net/tun is absent, the embassy-net TAP test cannot run here"
    [ "${REQUIRE_TUN:-0}" = 1 ] && exit 1
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    banner "netns-sync: needs root (network namespaces and TAP devices)"
    exit 1
fi

STUNNEL=${STUNNEL:-$(command -v stunnel4 || command -v stunnel || true)}
if [ "$SERVER" = constellation ] && [ -z "$STUNNEL" ]; then
    banner "netns-sync: FAILED: stunnel is missing (scripts/setup.sh installs stunnel4): the TLS PSK sync cannot run"
    exit 1
fi

release_flag=()
[ "$CARGO_PROFILE" = release ] && release_flag=(--release)
cargo build -q "${release_flag[@]}" -p omega-tv-sync-examples --bin embassy-client --bin embassy-test-server
if [ "$SERVER" = constellation ]; then
    cargo build -q --release -p constellation
fi

server_pid=""
tmp=$(mktemp -d)
stunnel_pid=""
stop_server() {
    if [ -n "$stunnel_pid" ]; then
        kill "$stunnel_pid" 2>/dev/null || true
        wait "$stunnel_pid" 2>/dev/null || true
        stunnel_pid=""
    fi
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
cleanup() {
    stop_server
    ip netns del "$NETNS" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

ip netns add "$NETNS"
nsx() { ip netns exec "$NETNS" "$@"; }
nsx ip link set lo up
nsx ip tuntap add dev "$TAP" mode tap
nsx ip addr add "$HOST_ADDR/24" dev "$TAP"
nsx ip link set "$TAP" up
echo "netns-sync: namespace $NETNS, $TAP $HOST_ADDR/24 <-> device $DEVICE_ADDR/24"

# start_server CMD...: runs it in the namespace and waits (bounded) until it listens.
start_server() {
    echo "netns-sync: server: $*"
    ip netns exec "$NETNS" "$@" &
    server_pid=$!
    for _ in $(seq 1 100); do
        if nsx ss -ltn 2>/dev/null | grep -q "$HOST_ADDR:$PORT"; then return 0; fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "netns-sync: FAILED: server exited before listening" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "netns-sync: FAILED: server not listening after 10 s" >&2
    exit 1
}

# run_client ARGS...: the client in the namespace, bounded in time; sets rc.
run_client() {
    set +e
    # shellcheck disable=SC2086 # the command line is meant to be split
    timeout "$CLIENT_TIMEOUT" ip netns exec "$NETNS" $CLIENT_CMD \
        --tap "$TAP" --addr "$DEVICE_ADDR/24" --server "$HOST_ADDR:$PORT" "$@"
    rc=$?
    set -e
}

if [ "$SERVER" = constellation ]; then
    keys=$("$TARGET_DIR/release/constellation" device add --db "$tmp/ns.redb" "$DEVICE" "$TLS_DEVICE")
    key=$(awk -v d="$DEVICE" '$1 == d { print $2 }' <<<"$keys")
    tls_key=$(awk -v d="$TLS_DEVICE" '$1 == d { print $2 }' <<<"$keys")
    [ ${#key} -eq 64 ] && [ ${#tls_key} -eq 64 ] ||
        { echo "netns-sync: FAILED: enrolment printed no key" >&2; exit 1; }
    # The TLS terminator's PSK file (ID:HEX, what the TLS device derives).
    (umask 077 && "$TARGET_DIR/release/constellation" device tls-psk --db "$tmp/ns.redb" "$TLS_DEVICE" >"$tmp/psk.txt")
    admin_token=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
    (umask 077 && printf '%s\n' "$admin_token" >"$tmp/admin-token")
    start_server "$TARGET_DIR/release/constellation" serve --db "$tmp/ns.redb" \
        --listen "$HOST_ADDR:$PORT" --admin-listen "$HOST_ADDR:$ADMIN_PORT" \
        --admin-token-file "$tmp/admin-token" --min-sync-interval 0 --log-level warn

    # 1. Plain HTTP.
    run_client --syncs "$SYNCS" --key "$key" --device "$DEVICE" \
        --admin-port "$ADMIN_PORT" --admin-token "$admin_token"
    if [ "$rc" -ne 0 ]; then
        echo "netns-sync: FAILED: plain client exited with $rc" >&2
        exit 1
    fi

    # 2. TLS 1.3 with a pre-shared key, through stunnel in the namespace.
    printf '%s\n' "foreground = yes" "pid =" "debug = 3" "[constellation-tls]" \
        "accept = $HOST_ADDR:$TLS_PORT" "connect = $HOST_ADDR:$PORT" \
        "PSKsecrets = $tmp/psk.txt" "ciphers = PSK" "sslVersionMin = TLSv1.3" >"$tmp/stunnel.conf"
    echo "netns-sync: TLS terminator: $STUNNEL on $HOST_ADDR:$TLS_PORT -> $HOST_ADDR:$PORT"
    ip netns exec "$NETNS" "$STUNNEL" "$tmp/stunnel.conf" 2>"$tmp/stunnel.log" &
    stunnel_pid=$!
    for _ in $(seq 1 100); do
        if nsx ss -ltn 2>/dev/null | grep -q "$HOST_ADDR:$TLS_PORT"; then break; fi
        sleep 0.1
    done
    run_client --syncs "$SYNCS" --key "$tls_key" --device "$TLS_DEVICE" --tls-port "$TLS_PORT" \
        --admin-port "$ADMIN_PORT" --admin-token "$admin_token"
    stop_server
    if [ "$rc" -ne 0 ]; then
        echo "netns-sync: FAILED: TLS client exited with $rc; stunnel said:" >&2
        cat "$tmp/stunnel.log" >&2
        exit 1
    fi
    echo "netns-sync: constellation: $SYNCS syncs over HTTP and $SYNCS over TLS 1.3 PSK, server state checked"
fi

# 3. The transport's HTTP edge cases against the test server.

server_cmd=${SERVER_CMD//\{ADDR\}/$HOST_ADDR:$PORT}
# shellcheck disable=SC2086 # the command line is meant to be split
start_server $server_cmd
run_client --rounds "$ROUNDS"
if [ "$rc" -ne 0 ]; then
    echo "netns-sync: FAILED: client exited with $rc" >&2
    exit 1
fi
if [ "$SERVER" = constellation ]; then
    echo "netns-sync: passed ($SYNCS syncs over HTTP and $SYNCS over TLS 1.3 PSK with Constellation, server state checked; HTTP edge cases against embassy-test-server)"
else
    echo "netns-sync: passed (HTTP checks against embassy-test-server)"
fi
