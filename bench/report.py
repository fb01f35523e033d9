"""Render a bench result (the JSON dict) as a Markdown table and a matplotlib PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _g(value: Any) -> str:
    """A figure with as few decimals as it needs (0.9, 20,000, 158.3)."""
    if value is None:
        return "n/a"
    return (
        f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 1000 else f"{value:,.2f}".rstrip("0").rstrip(".")
    )


def _x(value: Any) -> str:
    return "n/a" if value is None else f"{value:,.2f}x"


def _stage_rate(results: dict[str, Any], stage: str, key: str = "images_per_s") -> str:
    data = results.get(stage, {})
    if "error" in data:
        return f"FAILED: {data['error'][:120]}"
    if data.get("available") is False:
        return data.get("reason", "not measured")
    return _n(data.get(key))


def _peers_lines(peers: dict[str, Any]) -> list[str]:
    """The worker against bytewax and quix-streams on the same job (``peers`` stage)."""
    if not peers:
        return []
    if "error" in peers:
        return [f"Peers: FAILED: {peers['error'][:200]}", ""]
    lines = [
        f"The same job on the peers (`peers`): {_n(peers.get('images'))} pre-loaded images, one per record, "
        f"{peers.get('rounds')} rounds; every peer's predictions equal offline predict:",
        "",
        "| contender | images/s (best) | median | CPU ms/image (best) | median |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("worker", "bytewax", "quixstreams"):
        row = peers.get(name, {})
        lines.append(
            f"| {name} | {_n(row.get('images_per_s'))} | {_n(row.get('median_images_per_s'))} | "
            f"{row.get('cpu_ms_per_image')} | {row.get('median_cpu_ms_per_image')} |"
        )
    lines += [
        "",
        f"Worker over bytewax {_x(peers.get('worker_over_bytewax'))} (median of rounds "
        f"{_x(peers.get('median_round_worker_over_bytewax'))}), over quix-streams "
        f"{_x(peers.get('worker_over_quixstreams'))}, over `classify_batch` "
        f"({_n(peers.get('classify_batch_per_s'))}/s in this process) {_x(peers.get('worker_over_classify_batch'))}.",
        "",
    ]
    return lines


def _guarantee_lines(guarantees: dict[str, Any]) -> list[str]:
    """The worker at_least_once next to exactly_once, same topics, alternating rounds."""
    if not guarantees:
        return []
    if "error" in guarantees:
        return [f"Processing guarantees: FAILED: {guarantees['error'][:200]}", ""]
    lines = [
        f"`FMNIST_PROCESSING_GUARANTEE` (`guarantees`): {_n(guarantees.get('images'))} pre-loaded images per variant, "
        f"best of {guarantees.get('rounds')} alternating rounds:",
        "",
        "| Variant | at_least_once /s | exactly_once /s | exactly_once / at_least_once (best) | median of rounds |"
        " CPU ms/image (alo / eos) |",
        "|---|---|---|---|---|---|",
    ]
    for variant in ("per_record", "batch_records"):
        row = guarantees.get(variant, {})
        rates, cpu = row.get("images_per_s", {}), row.get("cpu_ms_per_image", {})
        lines.append(
            f"| {variant} | {_n(rates.get('at_least_once'))} | {_n(rates.get('exactly_once'))} | "
            f"{_x(row.get('exactly_once_over_at_least_once'))} | {_x(row.get('median_round_ratio'))} | "
            f"{_n(cpu.get('at_least_once'), 3)} / {_n(cpu.get('exactly_once'), 3)} |"
        )
    return [*lines, ""]


def _per_record_lines(per_record: dict[str, Any]) -> list[str]:
    """Stage 3b: the worker vs Faust's probes on one pre-loaded topic, per event loop."""
    if not per_record:
        return []
    if "error" in per_record:
        return [f"Per-record worker vs Faust's probes: FAILED: {per_record['error'][:200]}", ""]
    lines = [
        f"Per-record worker vs Faust's own probes (`per_record`): {_n(per_record.get('images'))} pre-loaded "
        f"images, one per record, batch {per_record.get('batch_size')}, "
        f"best of {per_record.get('rounds')} rounds each; the worker's loop is `{per_record.get('worker_loop')}`:",
        "",
        "| Event loop | worker /s | noop probe /s | forward probe /s | worker/forward | per round (median) "
        "| worker/noop | CPU ms/image worker, noop, forward |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for loop, row in per_record.get("by_loop", {}).items():
        rate, cpu = row.get("images_per_s", {}), row.get("cpu_ms_per_image", {})
        lines.append(
            f"| {loop} | {_n(rate.get('worker'))} | {_n(rate.get('noop'))} | {_n(rate.get('forward'))} | "
            f"{_x(row.get('ratio_to_forward'))} | "
            f"{', '.join(_g(r) for r in row.get('round_ratios_to_forward', []))} "
            f"({_x(row.get('median_round_ratio_to_forward'))}) | {_x(row.get('ratio_to_noop'))} | "
            f"{', '.join(_n(cpu.get(k), 3) for k in ('worker', 'noop', 'forward'))} |"
        )
    latency = per_record.get("rate_1000", {}).get("to_prediction_published_ms", {})
    lines += [
        "",
        f"Worker/forward on the worker's loop: {_x(per_record.get('ratio_to_forward'))} (target 0.75x); "
        f"worker on uvloop over asyncio: {_x(per_record.get('worker_uvloop_over_aio'))}. At 1,000 images/s "
        f"offered: p50 {_n(latency.get('p50'), 1)} ms, p99 {_n(latency.get('p99'), 1)} ms (target <= 100 ms).",
        "",
    ]
    return lines


def _two_workers_bound(two: dict[str, Any]) -> str:
    """One sentence, from the measured CPU, on what held two workers' rate to its ratio over one."""
    one, pair = two.get("one_worker", {}), two.get("two_workers", {})
    if one.get("cpu_cores_busy") is None or pair.get("cpu_cores_busy") is None:
        return "Too few images in this run to read the workers' CPU over the drain."
    return (
        f"What bounds the ratio ({_x(two.get('ratio'))}): the workers' rate is the CPU they get over what an image "
        f"costs them. Two workers got {pair['cpu_cores_busy']:.2f} cores between them "
        f"({pair.get('worker_cpu_cores_busy')}) against {one['cpu_cores_busy']:.2f} for one alone, on "
        f"{two.get('cpus')} cores of which the machine had {pair.get('machine_busy_cores')} busy (broker "
        f"{_n(pair.get('broker_cpu_cores_busy'), 2)}, other work {_n(pair.get('other_cores_busy'), 2)}); and an image "
        f"cost {_n(pair.get('worker_cpu_ms_per_image'), 3)} ms of worker CPU with two against "
        f"{_n(one.get('worker_cpu_ms_per_image'), 3)} ms with one. Of the two workers' drain, "
        f"{pair.get('before_all_busy_s')} s passed before both had work (joining the group, rebalancing), "
        f"{pair.get('all_busy_s')} s with both busy at {_n(pair.get('all_busy_images_per_s'))} images/s "
        f"({_x(two.get('all_busy_ratio'))} one worker), and {pair.get('tail_s')} s with one finishing alone."
    )


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown: stages, ratios, latency, sweeps, footprint, targets."""
    ceiling = results.get("ceiling", {})
    naive = results.get("naive", {})
    kafka = results.get("kafka", {})
    pubsub = results.get("pubsub", {})
    bridge = results.get("bridge", {})
    multistream = results.get("bridge_multistream", {})
    two = results.get("two_workers", {})
    ratio = results.get("ratios", {})
    machine = results.get("machine", {})
    lines = [
        f"# fmnist-faust bench ({results.get('mode')} run, {results.get('started_at')})",
        "",
        f"{machine.get('cpus')} CPUs, Python {machine.get('python')}, commit {machine.get('git_commit')}"
        f"{' + uncommitted changes to ' + ', '.join(machine['uncommitted_code']) if machine.get('uncommitted_code') else ''}; "
        f"load average {machine.get('loadavg_at_start')} at start, {machine.get('loadavg_at_end')} at end. "
        "Kafka, the Pub/Sub emulator, the producer, the worker and this harness share the machine: "
        "absolute figures are noisy, ratios are taken within this one run.",
        "",
        "| # | Stage | images/s | Notes |",
        "|---|---|---:|---|",
    ]
    blas = ceiling.get("by_blas_threads", {})
    batch = ceiling.get("batch_size")
    two_blas = blas.get("2", {})
    lines.append(
        f"| 1 | Model ceiling: `Classifier.predict` on {ceiling.get('images', 'n/a')} test images, one batch, "
        f"BLAS pinned to {ceiling.get('blas_threads_pinned', 1)} thread | {_stage_rate(results, 'ceiling')} | "
        f"`classify_batch` (JSON+base64 decode + predict, batches of {batch}): {_n(ceiling.get('classify_batch_per_s'))}/s; "
        f"single-image predict: {_n(ceiling.get('single_image_per_s'))}/s; with 2 BLAS threads: "
        f"{_n(two_blas.get('predict_whole_batch_per_s'))}/s batched, "
        f"{_n(two_blas.get(f'classify_batch_of_{batch}_per_s'))}/s classify_batch |"
    )
    lines.append(
        f"| 2 | Naive baseline: per-message Faust agent (one predict + one send per event) | "
        f"{_stage_rate(results, 'naive')} | {naive.get('images', 'n/a')} pre-loaded images |"
    )
    defaults = kafka.get("defaults", {})
    lines.append(
        f"| 3 | fmnist-faust Kafka end to end, one worker, tables updated (defaults: batch "
        f"{defaults.get('batch_size')}) | {_stage_rate(results, 'kafka')} | "
        f"{_n(kafka.get('images'))} pre-loaded images, rate from prediction timestamps; table-confirmed "
        f"{_n(kafka.get('table_confirmed_images_per_s'))}/s; with the producer running concurrently "
        f"{_n(kafka.get('concurrent_images_per_s'))}/s; best batch {kafka.get('best_batch_size')}: "
        f"{_n(kafka.get('best_batch_images_per_s'))}/s |"
    )
    lines.append(
        f"| 4 | Raw Pub/Sub ceiling: streaming pull + ack, no work (emulator) | {_stage_rate(results, 'pubsub')} | "
        f"{_n(pubsub.get('images'))} pre-published images, flow control {pubsub.get('flow_control_max_messages')} messages |"
    )
    lines.append(
        f"| 5 | fmnist-faust Pub/Sub bridge end to end (emulator) | {_stage_rate(results, 'bridge')} | "
        f"{_n(bridge.get('images')) if bridge.get('available') else ''} |"
    )
    streams = multistream.get("streams")
    lines.append(
        f"| 6 | Pub/Sub bridge with {streams} streams (`bridge_multistream`) against one raw stream, same run | "
        f"{_stage_rate(results, 'bridge_multistream')} | raw single stream "
        f"{_n(multistream.get('raw_single_stream_images_per_s'))}/s (ratio {_x(multistream.get('ratio'))}, target "
        f"{_x(multistream.get('target_ratio'))}); raw with {streams} streams "
        f"{_n(multistream.get(f'raw_{streams}_streams_images_per_s'))}/s; bridge CPU "
        f"{_n(multistream.get('bridge_cpu_ms_per_image'), 3)} ms/image, {_n(multistream.get('cpu_cores_busy'), 2)} cores busy |"
    )
    pair = two.get("two_workers", {})
    lines.append(
        f"| 7 | Two Kafka workers, one group, against one (`two_workers`), same pre-loaded topic | "
        f"{_stage_rate(results, 'two_workers')} | one worker {_n(two.get('one_worker_images_per_s'))}/s "
        f"(ratio {_x(two.get('ratio'))}); {_n(two.get('images'))} images on {two.get('partitions')} partitions; "
        f"split {pair.get('images_classified_by_worker')} |"
    )
    kafka_batched = results.get("kafka_batched", {})
    bridge_batched = results.get("bridge_batched", {})
    lines.append(
        f"| 8 | fmnist-faust Kafka, one worker, batch records of {kafka_batched.get('images_per_record', 'n/a')} "
        f"images (`kafka_batched`) | {_stage_rate(results, 'kafka_batched')} | "
        f"{_n(kafka_batched.get('images'))} pre-loaded images, rate from prediction timestamps; table-confirmed "
        f"{_n(kafka_batched.get('table_confirmed_images_per_s'))}/s; worker CPU "
        f"{_n(kafka_batched.get('worker_cpu_ms_per_image'), 3)} ms/image |"
    )
    lines.append(
        f"| 9 | fmnist-faust Pub/Sub bridge, batch records of {bridge_batched.get('images_per_record', 'n/a')} "
        f"images (`bridge_batched`, emulator) | {_stage_rate(results, 'bridge_batched')} | "
        f"{_n(bridge_batched.get('images'))} pre-published images; table-confirmed "
        f"{_n(bridge_batched.get('table_confirmed_images_per_s'))}/s; bridge CPU "
        f"{_n(bridge_batched.get('bridge_cpu_ms_per_image'), 3)} ms/image |"
    )
    lines += [
        "",
        "| Ratio | Value |",
        "|---|---:|",
        f"| (3)/(2) Kafka e2e over naive agent | {_x(ratio.get('kafka_over_naive'))} |",
        f"| (3)/(1) Kafka e2e over model ceiling | {_x(ratio.get('kafka_over_ceiling'))} |",
        f"| (3)/`classify_batch` Kafka e2e over decode+predict | {_x(ratio.get('kafka_over_classify_batch'))} |",
        f"| (5)/(4) bridge over raw Pub/Sub | "
        f"{_x(ratio.get('bridge_over_raw')) if ratio.get('bridge_over_raw') else 'not measured'} |",
        f"| (6) bridge, {streams} streams, over one raw stream | "
        f"{_x(ratio.get('bridge_multistream_over_raw_single_stream'))} |",
        f"| (7) two Kafka workers over one | {_x(ratio.get('two_workers_over_one'))} |",
        f"| (8)/(3) Kafka batch records over one image per record | {_x(ratio.get('kafka_batched_over_kafka'))} |",
        f"| (9)/(5) bridge batch records over one image per message | {_x(ratio.get('bridge_batched_over_bridge'))} |",
        "",
    ]
    if multistream.get("sweep"):
        lines += [
            "Bridge by number of streaming pulls (`BRIDGE_STREAMS`), same backlog size each:",
            "",
            "| BRIDGE_STREAMS | images/s | table-confirmed images/s | CPU ms/image | cores busy |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in multistream["sweep"]:
            lines.append(
                f"| {row['streams']} | {_n(row['images_per_s'])} | {_n(row['table_confirmed_images_per_s'])} | "
                f"{_n(row['bridge_cpu_ms_per_image'], 3)} | {_n(row['cpu_cores_busy'], 2)} |"
            )
        lines.append("")
    if two.get("one_worker"):
        lines += [
            "Two workers against one: CPU over each drain, in cores busy (of "
            f"{two.get('cpus')}; the machine's total includes everything else running on it):",
            "",
            "| Workers | images/s | s before all busy / all busy / tail | images/s while all busy | each worker | "
            "broker | bench harness | other work on the machine | machine | worker CPU ms/image |",
            "|---:|---:|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        for run in (two["one_worker"], two.get("two_workers", {})):
            lines.append(
                f"| {run.get('workers')} | {_n(run.get('images_per_s'))} | {run.get('before_all_busy_s')} / "
                f"{run.get('all_busy_s')} / {run.get('tail_s')} | {_n(run.get('all_busy_images_per_s'))} | "
                f"{run.get('worker_cpu_cores_busy', 'n/a')} | {_n(run.get('broker_cpu_cores_busy'), 2)} | "
                f"{_n(run.get('harness_cores_busy'), 2)} | "
                f"{_n(run.get('other_cores_busy'), 2)} | {_n(run.get('machine_busy_cores'), 2)} | "
                f"{_n(run.get('worker_cpu_ms_per_image'), 3)} |"
            )
        lines += ["", _two_workers_bound(two), ""]
    diagnostics = kafka.get("diagnostics", {})
    if diagnostics:
        lines += [
            "What bounds the Kafka path: the same pre-loaded topic read by less and less of the pipeline "
            "(CPU ms/image: user + system time of that process, all threads):",
            "",
            "| Reader | images/s | CPU ms/image |",
            "|---|---:|---:|",
        ]
        raw = diagnostics.get("aiokafka_consume", {})
        lines.append(f"| aiokafka `getmany`, no work (in the harness) | {_n(raw.get('images_per_s'))} | n/a |")
        labels = {
            "noop": "Faust `take_events`, no work (bench/probe_app.py noop)",
            "forward": "Faust `take_events` + one send per event, acks awaited (probe forward)",
        }
        for mode, label in labels.items():
            probe = diagnostics.get(f"faust_{mode}")
            if probe:
                lines.append(f"| {label} | {_n(probe.get('images_per_s'))} | {_n(probe.get('cpu_ms_per_image'), 3)} |")
        lines.append(
            f"| fmnist-faust worker (decode, predict, publish, tables) | {_n(kafka.get('images_per_s'))} | "
            f"{_n(kafka.get('worker_cpu_ms_per_image'), 3)} |"
        )
        lines.append("")
    lines += _per_record_lines(results.get("per_record", {}))
    lines += _peers_lines(results.get("peers", {}))
    lines += _guarantee_lines(results.get("guarantees", {}))
    lat = kafka.get("latency", {})
    if lat:
        lines += [
            "Latency from `sent_at` (stamped by the producer) to the prediction, one worker "
            f"(batch {lat.get('batch_size')}), ms:",
            "",
            "| Offered | Achieved offered | Predictions/s | Measured as | p50 | p95 | p99 | max | n |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for phase in [k for k in lat if k.startswith("rate_")] + ["saturation"]:
            data = lat.get(phase)
            if not data:
                continue
            label = f"{int(phase[5:]):,}/s" if phase.startswith("rate_") else "saturation (producer unthrottled)"
            for key, what in (
                ("to_prediction_published_ms", "published (record timestamp)"),
                ("consumer_observed_ms", "consumer received"),
                ("worker_latency_ms", "worker `latency_ms` (at predict)"),
            ):
                p = data.get(key)
                if p:
                    lines.append(
                        f"| {label} | {_n(data.get('offered_per_s'))}/s | {_n(data.get('images_per_s'))} | {what} | {_n(p['p50'], 1)} | "
                        f"{_n(p['p95'], 1)} | {_n(p['p99'], 1)} | {_n(p['max'], 1)} | {_n(p['n'])} |"
                    )
        lines.append("")
    if kafka.get("batch_sweep"):
        lines += [
            "Batch-size sweep (pre-loaded topic):",
            "",
            "| FMNIST_BATCH_SIZE | images/s | table-confirmed images/s | ready s | peak RSS MB |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in kafka["batch_sweep"]:
            lines.append(
                f"| {row['batch_size']} | {_n(row['images_per_s'])} | {_n(row['table_confirmed_images_per_s'])} "
                f"| {_n(row['ready_s'], 2)} | {_n(row['peak_rss_mb'], 1)} |"
            )
        lines.append("")
    if kafka.get("best_batch_size") is not None:
        lines += [
            f"Best batch size: {kafka.get('best_batch_size')} ({_n(kafka.get('best_batch_images_per_s'))}/s).",
            "",
        ]
    ready_all = kafka.get("ready_s_all_workers", {})
    lines += [
        "| Footprint | Worker | Bridge |",
        "|---|---:|---:|",
        f"| Peak RSS (VmHWM), MB | {_n(kafka.get('peak_rss_mb'), 1)} | "
        f"{_n(bridge.get('peak_rss_mb'), 1) if bridge.get('available') else 'not measured'} |",
        f"| Cold start to ready (/accuracy/ answers, empty changelog), s | {_n(kafka.get('ready_s_empty_changelog'), 2)} "
        f"(all workers this run: {_n(ready_all.get('min'), 2)}-{_n(ready_all.get('max'), 2)}) | "
        f"{_n(bridge.get('ready_s'), 2) if bridge.get('available') else 'not measured'} |",
        "",
    ]
    lines += ["| Target | Value | Target | Met |", "|---|---:|---:|---|"]
    for name, t in results.get("targets", {}).items():
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {name} | {_g(t['value'])} | {_g(t['target'])} | {met} |")
    lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Four panels: throughput per stage (+ Faust diagnostics), p99 latency against the
    offered rate, batch-size sweep, the worker against its peers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kafka = results.get("kafka", {})
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    bars_spec = [
        ("(1) model\nceiling", results.get("ceiling", {}).get("images_per_s"), "#888"),
        ("(2) naive\nagent", results.get("naive", {}).get("images_per_s"), "#c55"),
        ("(3) Kafka\ne2e", kafka.get("images_per_s"), "#27c"),
        ("(4) raw\nPub/Sub", results.get("pubsub", {}).get("images_per_s"), "#7a7"),
        ("(5) Pub/Sub\nbridge", results.get("bridge", {}).get("images_per_s"), "#2a7"),
        ("(6) bridge\nstreams", results.get("bridge_multistream", {}).get("images_per_s"), "#2a7"),
        ("(7) two\nworkers", results.get("two_workers", {}).get("images_per_s"), "#27c"),
        ("(8) Kafka\nbatched", results.get("kafka_batched", {}).get("images_per_s"), "#15a"),
        ("(9) bridge\nbatched", results.get("bridge_batched", {}).get("images_per_s"), "#185"),
    ]
    diag = kafka.get("diagnostics", {})
    for key, label in (
        ("aiokafka_consume", "aiokafka\nread only"),
        ("faust_noop", "Faust\nno work"),
        ("faust_forward", "Faust\n+ sends"),
    ):
        if key in diag:
            bars_spec.append((label, diag[key].get("images_per_s"), "#bbd"))
    ax = axes[0][0]
    values = [v if isinstance(v, (int, float)) else 0 for _, v, _ in bars_spec]
    bars = ax.bar([n for n, _, _ in bars_spec], [v or 0.1 for v in values], color=[c for _, _, c in bars_spec])
    ax.set_yscale("log")
    ax.set_ylabel("images/s (log)")
    ax.set_title("Throughput per stage (light: what bounds the Kafka path)")
    ax.tick_params(axis="x", labelsize=7)
    for bar, value in zip(bars, values):
        ax.annotate(
            f"{value:,.0f}" if value else "not\nmeasured",
            (bar.get_x() + bar.get_width() / 2, max(value, 0.1)),
            ha="center",
            va="bottom",
            fontsize=8,
        )

    ax = axes[0][1]
    lat = kafka.get("latency", {})
    offered = sorted(int(k[5:]) for k in lat if k.startswith("rate_"))
    for pct in ("p50", "p95", "p99"):
        ax.plot(offered, [lat[f"rate_{r}"]["to_prediction_published_ms"][pct] or 0 for r in offered], "o-", label=pct)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("images/s offered, one image per record")
    ax.set_ylabel("ms, sent_at -> prediction published (log)")
    ax.plot([1000, 5000], [50, 100], "kx", ms=9, label="p99 targets (50 ms at 1k/s, 100 ms at 5k/s)")
    ax.set_title(f"Kafka e2e latency against offered rate (batch {lat.get('batch_size')})")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    sweep = kafka.get("batch_sweep", [])
    if sweep:
        ax.plot(
            [r["batch_size"] for r in sweep], [r["images_per_s"] for r in sweep], "o-", label="pre-loaded e2e images/s"
        )
        ax.set_xscale("log")
        ax.axhline(20_000, color="k", lw=0.8, ls="--", label="target 20k/s")
        ax.set_xlabel("FMNIST_BATCH_SIZE")
        ax.set_ylabel("images/s")
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        twin.plot(
            [r["batch_size"] for r in sweep],
            [r.get("worker_cpu_ms_per_image") or 0 for r in sweep],
            "s--",
            color="#c83",
            label="worker CPU ms/image",
        )
        twin.set_ylabel("worker CPU ms/image")
        twin.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8)
        twin.legend(loc="upper right", fontsize=8)
    ax.set_title("Batch-size sweep")

    ax = axes[1][1]
    peers = results.get("peers", {})
    contenders = [(name, peers[name]) for name in ("worker", "bytewax", "quixstreams") if name in peers]
    if contenders:
        xs = list(range(len(contenders)))
        bars = ax.bar(xs, [row["images_per_s"] for _, row in contenders], color=["#27c", "#c83", "#7a7"][: len(xs)])
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{name}\n{row['cpu_ms_per_image']} CPU ms/image" for name, row in contenders])
        for bar, (_, row) in zip(bars, contenders):
            ax.annotate(
                f"{row['images_per_s']:,}", (bar.get_x() + bar.get_width() / 2, row["images_per_s"]), ha="center"
            )
        ax.set_ylabel("images/s, best of rounds")
    else:
        ax.text(0.5, 0.5, "no peers stage in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("The same job on the peers (one image per record, same model)")
    machine = results.get("machine", {})
    fig.suptitle(
        f"fmnist-faust bench ({results.get('mode')}, {results.get('started_at')}; shared "
        f"{machine.get('cpus')}-CPU machine, load {machine.get('loadavg_at_start', ['?'])[0]}: noisy)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
