#!/usr/bin/env bash
# Builds the Python environment of the peers (PyTorch CPU paths, numpy, h5py, mpi4py) under
# target/bench-peers/venv with pip from PyPI, once per content of bench/peers/requirements.txt,
# and prints the path of its python. Needs python3 with venv, and mpicc (libopenmpi-dev) for
# mpi4py.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=target/bench-peers
REQ=bench/peers/requirements.txt
STAMP=$DIR/venv/.requirements-$(sha256sum "$REQ" | cut -c1-16)
if [[ ! -f $STAMP ]]; then
    command -v python3 >/dev/null || { echo "bench-peers: python3 is missing" >&2; exit 1; }
    mkdir -p "$DIR"
    [[ -x $DIR/venv/bin/python ]] || python3 -m venv "$DIR/venv" >&2
    echo "bench-peers: installing $(grep -v '^#' "$REQ" | xargs) into $DIR/venv (PyPI; torch brings about 5 GB of CUDA libraries)" >&2
    "$DIR/venv/bin/pip" install --progress-bar off -q -r "$REQ" >&2
    touch "$STAMP"
fi
echo "$PWD/$DIR/venv/bin/python"
