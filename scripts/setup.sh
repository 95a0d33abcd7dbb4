#!/usr/bin/env bash
# Installs what the checks need beyond the Rust toolchain: the Cortex-M target,
# the ARM C cross compiler and newlib (zstd-sys), QEMU, stunnel (the TLS
# PSK terminator of the netns test), and for the C API (ffi/): a host C
# compiler, make, libcurl's headers, valgrind and the pinned cbindgen. Idempotent; run as
# root (or with sudo available) on Debian.
set -uo pipefail

TARGET=thumbv7em-none-eabihf

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    echo "setup: installing Rust target $TARGET"
    if ! rustup target add "$TARGET" >/dev/null 2>&1; then
        echo "!!!!!!!! setup: could NOT install the Rust target $TARGET !!!!!!!!" >&2
        echo "!!!!!!!! .ci/run will build the no_std consumer for the host instead !!!!!!!!" >&2
    fi
fi

need=()
command -v arm-none-eabi-gcc >/dev/null || need+=(gcc-arm-none-eabi)
[ -e /usr/lib/arm-none-eabi/include/string.h ] || need+=(libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
# The TLS 1.3 PSK terminator of scripts/netns-sync.sh.
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need+=(stunnel4)
# The C API's host programs and checks (ffi/).
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
[ -e /usr/include/curl/curl.h ] || [ -n "$(ls /usr/include/*/curl/curl.h 2>/dev/null)" ] || need+=(libcurl4-openssl-dev)
command -v valgrind >/dev/null || need+=(valgrind)
# The PostgreSQL backend's tests start their own cluster (initdb, pg_ctl).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# The independent implementation in interop/.
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing ${need[*]}"
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
        || echo "setup: WARNING: could not install ${need[*]}" >&2
fi
# The header generator, pinned: .ci/run compares its output with the
# checked-in ffi/include/omega_tv_sync.h.
CBINDGEN_VERSION=0.29.4
if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen $CBINDGEN_VERSION" ]; then
    echo "setup: installing cbindgen $CBINDGEN_VERSION"
    cargo install cbindgen --version "$CBINDGEN_VERSION" --locked --quiet \
        || echo "setup: WARNING: could not install cbindgen $CBINDGEN_VERSION" >&2
fi
exit 0
