#!/usr/bin/env bash
# Installs the Debian packages named on the command line that are not installed yet.
# As root on Debian/Ubuntu it uses apt-get; elsewhere it names what is missing and fails.
set -euo pipefail

missing=()
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found; install Rust from https://rustup.rs first" >&2
    exit 1
fi
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "install-deps: missing packages: ${missing[*]}" >&2
    echo "install-deps: install them with: sudo apt-get install ${missing[*]}" >&2
    echo "install-deps: (or the equivalent for your system: Open MPI, HDF5, OpenBLAS, libclang)" >&2
    exit 1
fi
