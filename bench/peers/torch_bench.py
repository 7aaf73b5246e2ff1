"""The peer of `make bench`: the same workload as nn-train, trained by PyTorch on the same machine.

Run by bench/run.sh (BENCH_PEERS=1) under mpirun, one process per rank, with the Python
environment bench/peers/env.sh builds under target/. Each rank reads its contiguous slice of
the HDF5 file (as nn-train does), trains a torch.nn.Sequential of the same Dense layers with
Adam (lr 1e-3, epsilon 1e-7) on softmax cross-entropy, and with more than one rank sums the
gradients with one MPI Allreduce of a flat float32 buffer per step (mpi4py), every rank
taking its share of each global batch. `--precision bf16` runs the forward pass and the loss
under torch.autocast("cpu", torch.bfloat16), PyTorch's mixed precision.

Speed counts training steps only (no start-up, data loading or validation) of every epoch
after the first, like nn-train's. Rank 0 writes one JSON line to --out.
"""

import argparse
import json
import time

import h5py
import numpy as np
import torch
from mpi4py import MPI


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--layers", required=True, help="e.g. 1024:relu,1024:relu,10:softmax")
    p.add_argument("--batch-size", type=int, required=True, help="global batch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", choices=["float32", "bf16"], default="float32")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    with h5py.File(a.data, "r") as f:
        rows = f["x"].shape[0]
        lo, hi = rows * rank // size, rows * (rank + 1) // size
        x = torch.from_numpy(np.ascontiguousarray(f["x"][lo:hi], dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(f["y"][lo:hi]).astype(np.int64))

    layers, width = [], x.shape[1]
    for spec in a.layers.split(","):
        units, act = spec.split(":")
        layers.append(torch.nn.Linear(width, int(units)))
        width = int(units)
        if act == "relu":
            layers.append(torch.nn.ReLU())
        elif act != "softmax":  # softmax is folded into the loss
            raise SystemExit(f"torch_bench: activation {act} not supported")
    model = torch.nn.Sequential(*layers)
    # Same initial weights on every rank.
    with torch.no_grad():
        for t in model.parameters():
            comm.Bcast(t.data.numpy(), root=0)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()
    n_params = sum(t.numel() for t in params)
    flat = np.zeros(n_params, dtype=np.float32)
    summed = np.zeros(n_params, dtype=np.float32)

    local_batch = (a.batch_size + size - 1) // size
    steps = (hi - lo) // local_batch
    gen = torch.Generator().manual_seed(a.seed + rank)
    epoch_rates = []
    for epoch in range(a.epochs):
        order = torch.randperm(hi - lo, generator=gen)
        step_time = 0.0
        for s in range(steps):
            t0 = time.perf_counter()
            idx = order[s * local_batch:(s + 1) * local_batch]
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=False)
            if a.precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = loss_fn(model(xb), yb)
            else:
                loss = loss_fn(model(xb), yb)
            loss.backward()
            if size > 1:
                off = 0
                for t in params:
                    n = t.numel()
                    flat[off:off + n] = t.grad.numpy().reshape(-1)
                    off += n
                comm.Allreduce(flat, summed, op=MPI.SUM)
                summed /= size
                off = 0
                for t in params:
                    n = t.numel()
                    t.grad.copy_(torch.from_numpy(summed[off:off + n]).view_as(t.grad))
                    off += n
            opt.step()
            step_time += time.perf_counter() - t0
        # The slowest rank sets the pace of a data-parallel step.
        step_time = comm.allreduce(step_time, op=MPI.MAX)
        epoch_rates.append(steps * local_batch * size / step_time)
    if rank == 0:
        measured = epoch_rates[1:] or epoch_rates
        record = {
            "samples_per_s": len(measured) / sum(1.0 / r for r in measured),
            "epoch_samples_per_s": epoch_rates,
            "last_loss": loss.item(),
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "ranks": size,
            "threads": a.threads,
            "precision": a.precision,
        }
        with open(a.out, "w") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
