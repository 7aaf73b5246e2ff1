#!/usr/bin/env bash
# The scaling model, fitted to a bench-cluster results.csv (bench/cluster.sh):
# prints the measured tables, the fitted parameters and the model's predictions (Markdown).
#
#   bench/scaling-model.sh bench/results/cluster-STAMP/results.csv
#
# The model, per training step of a rank with b samples (its share of the global batch):
#   T(P, b)     = compute(b) + max(0, allreduce(S, P, B) - w * backward(b))
#   compute(b)  = c0 + c1 * b      c0: the optimizer step (its cost does not depend on b);
#                                  c1: forward + backward per sample; 1-node runs
#   backward(b) = beta * c1 * b    beta: backward's share of forward + backward
#   allreduce   = 2(P-1) * alpha + 2(P-1)/P * S * max(8 / (eta * B), gamma)
#       the ring: 2(P-1) messages; each rank sends (and receives) 2(P-1)/P of the S gradient
#       bytes, at the link rate B (bit/s) times eta, the fraction Open MPI over TCP achieves
#       (ring probes on 3 or more nodes at a cap where the link is the limit); unless the
#       CPU is slower: gamma, the seconds per byte the MPI stack needs (probes on uncapped
#       links). Both pipeline, hence the max. With 2 ranks both ring neighbours are the same
#       peer and its single TCP connection carries both directions: reported apart.
#       alpha (latency per message) cannot be measured here (no netem): assumed per
#       interconnect. gamma is this machine's (4 simulated nodes share 2 cores for their
#       TCP stacks); a real node does not, so the predictions use MODEL_GAMMA (default 0).
#   w           = the share of backward during which the allreduce progresses (overlap on):
#                 (allreduce time - wait) / backward, from the --overlap on runs
# Predictions (P = 8..1024) use the fitted parameters with each interconnect's link rate and
# assumed latency. They are predictions from the model, not measurements.
#
# Knobs (environment): MODEL_NETS="name:Gbit/s:latency_us ..." (default "25GbE:25:25
# IB-100G:100:2"), MODEL_BATCH=256 (per-rank batch of the predictions), MODEL_SPEEDUP=1 (a
# rank computes this many times faster than one core here, e.g. a whole node), MODEL_GAMMA
# (gamma of the predictions in ns/byte, or "fit" for the fitted one; default 0).
set -euo pipefail
CSV=${1:?usage: scaling-model.sh results.csv}
[[ -f $CSV ]] || { echo "scaling-model: no file $CSV" >&2; exit 1; }

awk -F, -v nets="${MODEL_NETS:-25GbE:25:25 IB-100G:100:2}" -v pb="${MODEL_BATCH:-256}" \
    -v speedup="${MODEL_SPEEDUP:-1}" -v gamma_set="${MODEL_GAMMA:-0}" '
function bits(rate,   n) {   # tc rate -> bit/s; "off" -> 0 (no cap)
    if (rate == "off") return 0
    n = rate; sub(/[a-z]+$/, "", n)
    if (rate ~ /gbit$/) return n * 1e9
    if (rate ~ /mbit$/) return n * 1e6
    if (rate ~ /kbit$/) return n * 1e3
    return n
}
function ring_bytes(p) { return 2 * (p - 1) / p * S }
function link(rate) { return rate == "off" ? "uncapped" : rate }
function max(a, b) { return a > b ? a : b }
function fail(msg) { print "scaling-model: " msg > "/dev/stderr"; failed = 1; exit 1 }
# bw in bit/s (0: uncapped), lat in s, g in s/byte.
function allreduce_s(p, bw, lat, g) { return 2 * (p - 1) * lat + ring_bytes(p) * max(bw > 0 ? 8 / (eta * bw) : 0, g) }
function compute_s(b) { return (c0 + c1 * b) / speedup }
function step_s(p, b, bw, lat,   exposed) {
    exposed = allreduce_s(p, bw, lat, gamma_pred) - w * beta * c1 * b / speedup
    return compute_s(b) + max(exposed, 0)
}
# Smallest per-rank batch whose step is at least half compute (parallel efficiency >= 50%).
function min_batch(p, bw, lat,   lo, hi, mid) {
    lo = 1; hi = 1
    while (compute_s(hi) / step_s(p, hi, bw, lat) < 0.5) { hi *= 2; if (hi > 1e9) return -1 }
    while (lo < hi) { mid = int((lo + hi) / 2); if (compute_s(mid) / step_s(p, mid, bw, lat) >= 0.5) hi = mid; else lo = mid + 1 }
    return lo
}
NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
{ n++; for (k in col) v[n, k] = $(col[k]) }
END {
    if (failed) exit 1
    # W3 gradient: 784-1024-1024-10 parameters plus the 3 statistics slots, f32.
    S = (784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10 + 3) * 4
    G = 256

    # compute: c0 = optimizer per step; c1 = least squares through 0 of the rest against b.
    for (i = 1; i <= n; i++) if (v[i, "kind"] == "compute") {
        b = v[i, "batch"]; o = v[i, "optimizer_ms"] / 1000; fb = (v[i, "compute_ms"] - v[i, "optimizer_ms"]) / 1000
        k++; so += o; sby += b * fb; sbb += b * b; bsum += v[i, "backward_ms"] / (v[i, "compute_ms"] - v[i, "optimizer_ms"])
    }
    if (k < 1) fail("no compute (1-node) runs in the results")
    c0 = so / k; c1 = sby / sbb; beta = bsum / k

    # gamma: uncapped ring probes (3+ nodes if any); eta: capped ring probes where the link,
    # not the CPU, is the limit (3+ nodes if any).
    for (pass = 3; pass >= 2 && gn == 0; pass--)
        for (i = 1; i <= n; i++)
            if (v[i, "kind"] == "probe" && v[i, "allreduce"] == "ring" && v[i, "rate"] == "off" && v[i, "nodes"] >= pass) {
                gsum += v[i, "allreduce_ms"] / 1000 / ring_bytes(v[i, "nodes"]); gn++
            }
    gamma = gn > 0 ? gsum / gn : 0
    for (pass = 3; pass >= 2 && en == 0; pass--)
        for (i = 1; i <= n; i++) {
            bw = bits(v[i, "rate"])
            if (v[i, "kind"] == "probe" && v[i, "allreduce"] == "ring" && bw > 0 && 8 / bw >= 2 * gamma && v[i, "nodes"] >= pass) {
                esum += ring_bytes(v[i, "nodes"]) * 8 / bw / (v[i, "allreduce_ms"] / 1000); en++; eta_nodes = pass
            }
        }
    if (en == 0) fail("no ring probe at a link cap slow enough to be the limit (e.g. BENCH_RATES=\"1gbit ...\")")
    eta = esum / en
    gamma_pred = gamma_set == "fit" ? gamma : gamma_set * 1e-9

    # w: hidden allreduce time per backward time in the --overlap on runs.
    for (i = 1; i <= n; i++)
        if (v[i, "kind"] == "train" && v[i, "overlap"] == "on" && v[i, "comm_ms"] > 0 && v[i, "backward_ms"] > 0) {
            wsum += (v[i, "comm_ms"] - v[i, "allreduce_ms"]) / v[i, "backward_ms"]; wn++
        }
    w = wn > 0 ? wsum / wn : 0
    if (w < 0) w = 0
    if (w > 1) w = 1

    print "### Measured: W3 (784-1024-1024-10, global batch 256), one rank per simulated node, 1 BLAS thread"
    print ""
    print "| nodes | links | overlap | samples/s | step (ms) | compute (ms) | allreduce (ms) | allreduce wait (ms) | communication share | hidden | overlap efficiency |"
    print "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for (i = 1; i <= n; i++) {
        if (v[i, "kind"] == "compute" && v[i, "batch"] == 256)
            printf "| 1 | - | - | %.0f | %.1f | %.1f | - | %.1f | %.0f%% | - | - |\n", v[i, "samples_per_s"], v[i, "step_ms"], v[i, "compute_ms"], v[i, "allreduce_ms"], 100 * v[i, "comm_share"]
        if (v[i, "kind"] == "train" && v[i, "overlap"] == "off") {
            key = v[i, "nodes"] SUBSEP v[i, "rate"]; off_step[key] = v[i, "step_ms"]; off_wait[key] = v[i, "allreduce_ms"]
        }
    }
    for (i = 1; i <= n; i++) {
        if (v[i, "kind"] != "train") continue
        key = v[i, "nodes"] SUBSEP v[i, "rate"]; comm = v[i, "comm_ms"] + 0
        hid = "-"; eff = "-"
        if (v[i, "overlap"] == "on" && comm > 0) hid = sprintf("%.0f%%", 100 * (1 - v[i, "allreduce_ms"] / comm))
        if (v[i, "overlap"] == "on" && (key in off_step) && off_wait[key] > 0) eff = sprintf("%.0f%%", 100 * (off_step[key] - v[i, "step_ms"]) / off_wait[key])
        printf "| %d | %s | %s | %.0f | %.1f | %.1f | %s | %.1f | %.0f%% | %s | %s |\n", v[i, "nodes"], link(v[i, "rate"]), v[i, "overlap"], v[i, "samples_per_s"], v[i, "step_ms"], v[i, "compute_ms"], (comm > 0 ? sprintf("%.1f", comm) : "-"), v[i, "allreduce_ms"], 100 * v[i, "comm_share"], hid, eff
    }
    print ""
    print "Per step. allreduce: the gradient sums'"'"' whole time; wait: the part the step waited for; communication share: wait / step; hidden: 1 - wait / allreduce; overlap efficiency: (step with overlap off - step with it on) / wait with it off."
    print ""
    printf "### Measured: the allreduce of the W3 gradient (%.2f MB) alone (probes: one row per rank)\n\n", S / 1e6
    print "| nodes | links | algorithm | allreduce (ms) | ideal ring at the cap (ms) | efficiency | model (ms) |"
    print "| ---: | --- | --- | ---: | ---: | ---: | ---: |"
    for (i = 1; i <= n; i++) {
        if (v[i, "kind"] != "probe") continue
        p = v[i, "nodes"]; bw = bits(v[i, "rate"]); t = v[i, "allreduce_ms"] / 1000
        ideal = bw > 0 ? ring_bytes(p) * 8 / bw : 0
        printf "| %d | %s | %s | %.1f | %s | %s | %s |\n", p, link(v[i, "rate"]), v[i, "allreduce"], 1000 * t, (bw > 0 ? sprintf("%.1f", 1000 * ideal) : "-"), (bw > 0 ? sprintf("%.2f", ideal / t) : "-"), (v[i, "allreduce"] == "ring" ? sprintf("%.1f", 1000 * allreduce_s(p, bw, 0, gamma)) : "-")
    }
    print ""
    print "Algorithm: Open MPI'"'"'s default choice, the ring (coll_tuned_allreduce_algorithm 4), or the default with two TCP connections per peer pair (btl_tcp_links 2). Efficiency: ideal ring time at the cap / measured."

    print ""
    print "### Fitted parameters"
    print ""
    printf "- compute(b) = c0 + c1 x b = %.2f ms + %.4f ms x b (one rank on one core of this machine; 1-node runs at b = 64, 128, 256); backward is %.0f%% of the per-sample part\n", 1000 * c0, 1000 * c1, 100 * beta
    printf "- eta = %.2f: the share of the link rate the ring allreduce achieves over TCP (%d probe(s) on %d+ nodes at a cap where the link is the limit)\n", eta, en, eta_nodes
    printf "- gamma = %.2f ns per ring byte (%.1f Gbit/s): the limit of this machine'"'"'s MPI stack, 4 nodes on 2 cores (uncapped probes); the predictions use %s\n", gamma * 1e9, (gamma > 0 ? 8 / gamma / 1e9 : 0), (gamma_set == "fit" ? "it (MODEL_GAMMA=fit)" : sprintf("%s ns/byte (MODEL_GAMMA; a node with cores of its own)", gamma_set))
    printf "- w = %.2f: the share of backward during which the allreduce progresses with --overlap on (%d run(s))\n", w, wn
    printf "- S = %.2f MB (the W3 gradient); alpha (latency per message) is assumed per interconnect below\n", S / 1e6

    print ""
    printf "### Predictions from the model (not measurements): W3, %d samples per rank per step", pb
    if (speedup != 1) printf ", a rank %sx faster than one core here", speedup
    print ""
    nn = split(nets, net, " ")
    for (q = 1; q <= nn; q++) {
        split(net[q], f, ":"); bw = f[2] * 1e9; lat = f[3] * 1e-6
        printf "\n%s: %s Gbit/s x eta %.2f, %s us per message (assumed)\n\n", f[1], f[2], eta, f[3]
        print "| ranks | allreduce (ms) | step (ms) | samples/s | efficiency | scaling stops below: batch per rank | global batch |"
        print "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for (p = 8; p <= 1024; p *= 2) {
            t = step_s(p, pb, bw, lat); bmin = min_batch(p, bw, lat)
            printf "| %d | %.1f | %.1f | %.0f | %.0f%% | %d | %d |\n", p, 1000 * allreduce_s(p, bw, lat, gamma_pred), 1000 * t, p * pb / t, 100 * compute_s(pb) / t, bmin, p * bmin
        }
        # Strong scaling: W3 global batch G split over more ranks.
        last = 1
        for (p = 2; p <= G && G / p >= min_batch(p, bw, lat); p *= 2) last = p
        if (last == G)
            printf "\nWith W3'"'"'s global batch of %d split over more ranks, %s keeps scaling down to 1 sample per rank (%d ranks).\n", G, f[1], G
        else
            printf "\nWith W3'"'"'s global batch of %d split over more ranks, %s stops scaling beyond %d rank%s (%d samples per rank).\n", G, f[1], last, (last > 1 ? "s" : ""), G / last
    }
    print ""
    print "Efficiency: compute / step. Scaling stops below: the smallest batch per rank at which a step is still at least half computation (efficiency 50%); with smaller batches adding ranks mostly adds communication."
}' "$CSV"
