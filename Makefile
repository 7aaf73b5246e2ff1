# nn-train: two commands on a fresh Debian machine.
#   make run    installs what is missing, builds, trains the digits model under mpirun
#   make test   installs what is missing, builds, runs every test (real mpirun ranks)
# Also: make deps | build | lint | bench | bench-peers | bench-cluster | clean

SHELL := /bin/bash
CARGO ?= cargo
RANKS ?= 4

# Debian packages the project needs (build: MPI, HDF5, OpenBLAS, oneDNN, bindgen's libclang;
# run: the HDF5 filter plugins for LZ4, BZip2 and Blosc data files; tests: hdf5-tools for
# h5dump/h5ls, slurm/munge for the job-script tests, iproute2 for the simulated cluster).
DEBIAN_PACKAGES := libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools libopenblas-dev \
                   hdf5-filter-plugin hdf5-filter-plugin-blosc-serial \
                   libclang-dev pkg-config libdnnl-dev
TEST_PACKAGES := slurm-wlm munge iproute2
# make bench-peers: a pip environment (mpi4py builds against Open MPI).
PEER_PACKAGES := python3 python3-venv python3-dev

# Open MPI refuses to run as root without these; tests and examples may oversubscribe cores.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
# Oversubscribed ranks should yield the CPU while they wait instead of spinning.
export OMPI_MCA_mpi_yield_when_idle := 1

MPIRUN := mpirun --oversubscribe --bind-to none -n $(RANKS)
BIN := target/release

.PHONY: all deps test-deps build lint run test bench bench-peers bench-cluster clean

all: build

deps:
	@./scripts/install-deps.sh $(DEBIAN_PACKAGES)

test-deps:
	@./scripts/install-deps.sh $(DEBIAN_PACKAGES) $(TEST_PACKAGES)

build: deps
	$(CARGO) build --release

run: build
	@mkdir -p out
	$(MPIRUN) $(BIN)/nn-train --data data/digits/train.h5 --val data/digits/test.h5 \
	    --layers 128:relu,128:relu,10:softmax --epochs 20 --batch-size 32 --lr 0.001 \
	    --checkpoint out/digits.h5 --metrics out/digits.jsonl
	$(MPIRUN) $(BIN)/nn-predict --model out/digits.h5 --data data/digits/test.h5 \
	    --out out/digits-predictions.h5 --min-accuracy 0.97
	$(BIN)/nn-data plot out/digits.jsonl --out out/digits-curves.png

# The gate CI runs before the tests: formatting and clippy with warnings as errors.
lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

# cargo hides what a passing test prints, so the checks a test could not run on this machine
# (no bf16 unit, no python3) are collected in target/test-skips.log and listed at the end.
test: test-deps
	$(CARGO) build --release
	rm -f target/test-skips.log
	NN_TRAIN_SKIP_LOG=$(CURDIR)/target/test-skips.log $(CARGO) test --release -- --test-threads=2
	@if [ -s target/test-skips.log ]; then \
		echo "make test: checks skipped on this machine (their tests passed without them):"; \
		sort target/test-skips.log | sed 's/^/  /'; \
	else echo "make test: no check skipped on this machine"; fi

# The benchmark suite (bench/run.sh says what it measures). Knobs: BENCH_REPS,
# BENCH_WORKLOADS, BENCH_W4=1 (the 6 GB workload), BENCH_QUICK=1 (tiny sizes), BENCH_ARGS,
# BENCH_CORETYPE=1 (W1/W3 with the BLAS kernels forced), BENCH_PEERS=1 (PyTorch in the same run).
bench: deps
	$(CARGO) build --release --bins --examples
	./bench/run.sh

# make bench with PyTorch (float32 and bf16 autocast) measured beside nn-train in the same run
# (bench/peers/: a pip environment under target/bench-peers, about 5.4 GB with torch's CUDA
# libraries), and W1/W3 with the BLAS kernels forced three ways (BENCH_CORETYPE=1).
bench-peers:
	@./scripts/install-deps.sh $(DEBIAN_PACKAGES) $(PEER_PACKAGES)
	$(CARGO) build --release --bins --examples
	BENCH_PEERS=1 BENCH_CORETYPE=1 BENCH_WORKLOADS="$${BENCH_WORKLOADS:-W1 W3}" ./bench/run.sh

# Simulated nodes (network namespaces, root only), links capped with tc: see bench/cluster.sh.
bench-cluster: test-deps
	$(CARGO) build --release --bins
	./bench/cluster.sh

clean:
	$(CARGO) clean
	rm -rf out
