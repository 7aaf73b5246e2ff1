#!/usr/bin/env bash
# The scaling model of issue 7, fitted to a bench-cluster results.csv (bench/cluster.sh):
# prints the measured tables, the fitted parameters and the model's predictions (Markdown).
#
#   bench/scaling-model.sh bench/results/cluster-STAMP/results.csv
#
# The model, per training step of a rank with b samples (its share of the global batch):
#   T(P, b)   = compute(b) + max(0, allreduce(S, P, B) - w * backward(b))
#   compute(b)  = c0 + c1 * b                       fitted to the 1-node runs
#   backward(b) = beta * compute(b)                 beta: backward's share, 1-node runs
#   allreduce   = 2(P-1) * alpha + 2(P-1)/P * S * (1/(eta * B) + gamma)
#                 the ring: 2(P-1) messages, each rank sends and receives 2(P-1)/P of S bytes;
#                 eta (achieved fraction of the link rate B) and gamma (CPU time per byte the
#                 MPI stack spends, the limit when the link is fast) fitted to the ring probes;
#                 alpha (per-message latency) cannot be measured here (no netem): assumed.
#                 gamma is this machine's: 4 simulated nodes share 2 cores for their TCP
#                 stacks and reductions. A real node does not, so predictions leave it out
#                 unless MODEL_GAMMA says otherwise.
#   w           = the fraction of backward that hides the allreduce (overlap on), fitted to
#                 the on/off pairs; 0 when they were not measured
# Predictions (P = 8..1024) use the fitted parameters with the link rate and latency of each
# interconnect below. They are predictions from the model, not measurements.
#
# Knobs (environment): MODEL_NETS="name:Gbit/s:latency_us ..." (default "25GbE:25:25
# IB-100G:100:2"), MODEL_BATCH=256 (per-rank batch of the prediction), MODEL_SPEEDUP=1 (a
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
function allreduce_s(p, bw, lat) { return 2 * (p - 1) * lat + ring_bytes(p) * (8 / (eta * bw) + gamma) }  # bw in bit/s
function compute_s(b) { return (c0 + c1 * b) / speedup }
function step_s(p, b, bw, lat,   c, exposed) {
    c = compute_s(b); exposed = allreduce_s(p, bw, lat) - w * beta * c
    return c + (exposed > 0 ? exposed : 0)
}
# Smallest per-rank batch whose step is at least half compute (parallel efficiency >= 50%).
function min_batch(p, bw, lat,   lo, hi, mid) {
    lo = 1; hi = 1
    while (compute_s(hi) / step_s(p, hi, bw, lat) < 0.5) { hi *= 2; if (hi > 1e9) return -1 }
    while (lo < hi) { mid = int((lo + hi) / 2); if (compute_s(mid) / step_s(p, mid, bw, lat) >= 0.5) hi = mid; else lo = mid + 1 }
    return lo
}
NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
{
    n++; for (k in col) v[n, k] = $(col[k])
}
END {
    # W3 gradient: 784-1024-1024-10 parameters plus the 3 statistics slots, f32.
    S = (784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10 + 3) * 4
    G = 256

    print "### Measured: W3 (784-1024-1024-10, global batch 256), one rank per simulated node, 1 BLAS thread"
    print ""
    print "| nodes | links | overlap | samples/s | step (ms) | compute (ms) | allreduce (ms) | allreduce wait (ms) | communication share | hidden | overlap efficiency |"
    print "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for (i = 1; i <= n; i++) {
        if (v[i, "kind"] == "compute" && v[i, "batch"] == 256)
            printf "| 1 | - | - | %.0f | %.1f | %.1f | - | %.1f | %.0f%% | - | - |\n", v[i, "samples_per_s"], v[i, "step_ms"], v[i, "compute_ms"], v[i, "allreduce_ms"], 100 * v[i, "comm_share"]
        if (v[i, "kind"] != "train") continue
        key = v[i, "nodes"] SUBSEP v[i, "rate"]
        if (v[i, "overlap"] == "off") { off_step[key] = v[i, "step_ms"]; off_ar[key] = v[i, "allreduce_ms"]; off_bwd[key] = v[i, "backward_ms"] }
    }
    for (i = 1; i <= n; i++) {
        if (v[i, "kind"] != "train") continue
        key = v[i, "nodes"] SUBSEP v[i, "rate"]
        eff = "-"
        if (v[i, "overlap"] == "on" && (key in off_step) && off_ar[key] > 0) {
            hidden = off_step[key] - v[i, "step_ms"]
            eff = sprintf("%.0f%%", 100 * hidden / off_ar[key])
            if (off_ar[key] > off_bwd[key]) { wsum += hidden / off_bwd[key]; wn++ }
            else { wsum_all += hidden / off_bwd[key]; wn_all++ }
        }
        comm = v[i, "comm_ms"] + 0
        hid = (v[i, "overlap"] == "on" && comm > 0) ? sprintf("%.0f%%", 100 * (1 - v[i, "allreduce_ms"] / comm)) : "-"
        printf "| %d | %s | %s | %.0f | %.1f | %.1f | %s | %.1f | %.0f%% | %s | %s |\n", v[i, "nodes"], link(v[i, "rate"]), v[i, "overlap"], v[i, "samples_per_s"], v[i, "step_ms"], v[i, "compute_ms"], (comm > 0 ? sprintf("%.1f", comm) : "-"), v[i, "allreduce_ms"], 100 * v[i, "comm_share"], hid, eff
    }
    print ""
    print "allreduce: the gradient sums'"'"' whole time (comm_s); wait: the part the step waited for (allreduce_s); communication share: wait / step; hidden: 1 - wait / allreduce; overlap efficiency: (step off - step on) / wait off, the share of the communication overlap took off the step."
    print ""
    printf "### Measured: the allreduce of the W3 gradient (%.2f MB), one row per rank (probe runs)\n\n", S / 1e6
    print "| nodes | links | algorithm | allreduce (ms) | ideal ring at the cap (ms) | bus bandwidth (Gbit/s) |"
    print "| ---: | --- | --- | ---: | ---: | ---: |"
    for (i = 1; i <= n; i++) {
        if (v[i, "kind"] != "probe") continue
        p = v[i, "nodes"]; bw = bits(v[i, "rate"]); t = v[i, "allreduce_ms"] / 1000
        ideal = bw > 0 ? sprintf("%.1f", 1000 * ring_bytes(p) * 8 / bw) : "-"
        printf "| %d | %s | %s | %.1f | %s | %.2f |\n", p, link(v[i, "rate"]), v[i, "allreduce"], 1000 * t, ideal, ring_bytes(p) * 8 / t / 1e9
        if (v[i, "allreduce"] == "ring") {
            # y = seconds per ring byte = (1/eta) * x + gamma, x = 1/B (in s/byte)
            x = bw > 0 ? 8 / bw : 0; y = t / ring_bytes(p)
            fx[++m] = x; fy[m] = y; fp[m] = p; flink[m] = link(v[i, "rate"])
        }
    }

    # compute(b) = c0 + c1 b: least squares over the 1-node runs.
    for (i = 1; i <= n; i++) if (v[i, "kind"] == "compute") {
        b = v[i, "batch"]; c = v[i, "compute_ms"] / 1000
        k++; sb += b; sc += c; sbb += b * b; sbc += b * c; bsum += v[i, "backward_ms"] / v[i, "compute_ms"]
    }
    if (k < 2) { print "scaling-model: need compute runs at two batch sizes or more" > "/dev/stderr"; exit 1 }
    c1 = (k * sbc - sb * sc) / (k * sbb - sb * sb); c0 = (sc - c1 * sb) / k; beta = bsum / k
    if (m < 2) { print "scaling-model: need ring probes at two rates or more" > "/dev/stderr"; exit 1 }
    for (j = 1; j <= m; j++) { sx += fx[j]; sy += fy[j]; sxx += fx[j] * fx[j]; sxy += fx[j] * fy[j] }
    inv_eta = (m * sxy - sx * sy) / (m * sxx - sx * sx); gamma = (sy - inv_eta * sx) / m; eta = 1 / inv_eta
    gamma_fit = gamma
    if (gamma_set != "fit") gamma = gamma_set * 1e-9
    if (wn > 0) w = wsum / wn; else if (wn_all > 0) w = wsum_all / wn_all; else w = 0
    if (w < 0) w = 0; if (w > 1) w = 1

    print ""
    print "### Fitted parameters"
    print ""
    printf "- compute(b) = %.2f ms + %.4f ms x b (one rank, one core; 1-node runs at b = 64, 128, 256); backward is %.0f%% of it\n", 1000 * c0, 1000 * c1, 100 * beta
    printf "- ring allreduce: achieved link efficiency eta = %.2f; CPU cost gamma = %.2f ns per ring byte (%.1f Gbit/s when the link is not the limit)%s\n", eta, gamma_fit * 1e9, 8 / gamma_fit / 1e9, (gamma_set != "fit" ? sprintf("; the predictions use gamma = %s ns/byte (a node with cores of its own; MODEL_GAMMA=fit keeps the fitted one)", gamma_set) : "")
    printf "  (fit to %d ring probes; model vs measured:", m
    for (j = 1; j <= m; j++) printf "%s %d nodes %s %.1f/%.1f ms", (j > 1 ? ";" : ""), fp[j], flink[j], 1000 * (fx[j] * inv_eta + gamma_fit) * ring_bytes(fp[j]), 1000 * fy[j] * ring_bytes(fp[j])
    print ")"
    printf "- overlap: w = %.2f of backward hides the allreduce%s\n", w, ((wn + wn_all) > 0 ? "" : " (no --overlap on/off pairs were measured: w = 0)")
    printf "- W3 gradient S = %.2f MB; ring bytes per rank 2(P-1)/P x S\n", S / 1e6

    print ""
    printf "### Predictions from the model (not measurements): W3, %d samples per rank per step", pb
    if (speedup != 1) printf ", a rank %sx faster than one core here", speedup
    print ""
    nn = split(nets, net, " ")
    for (q = 1; q <= nn; q++) {
        split(net[q], f, ":"); bw = f[2] * 1e9; lat = f[3] * 1e-6
        printf "\n%s (%s Gbit/s, %s us per message assumed):\n\n", f[1], f[2], f[3]
        print "| ranks | allreduce (ms) | step (ms) | samples/s | efficiency | stops scaling below: batch per rank | global batch |"
        print "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for (p = 8; p <= 1024; p *= 2) {
            t = step_s(p, pb, bw, lat); bmin = min_batch(p, bw, lat)
            printf "| %d | %.1f | %.1f | %.0f | %.0f%% | %d | %d |\n", p, 1000 * allreduce_s(p, bw, lat), 1000 * t, p * pb / t, 100 * compute_s(pb) / t, bmin, p * bmin
        }
        # Strong scaling: a fixed global batch G split over more ranks.
        last = 1
        for (p = 2; p <= 1024 && G / p >= min_batch(p, bw, lat); p *= 2) last = p
        printf "\nWith a fixed global batch of %d (W3'"'"'s), %s stops scaling beyond %d ranks (%d samples per rank).\n", G, f[1], last, G / last
    }
    print ""
    print "\"Stops scaling below\": the smallest batch per rank at which a step is still at least half computation (parallel efficiency 50%); with a smaller batch, adding ranks mostly adds communication."
}' "$CSV"
