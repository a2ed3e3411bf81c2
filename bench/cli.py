"""``affectstream bench``: every speed figure of affectstream in one run, printed side by side.

    affectstream bench                 # full run (~10-15 min on 2 cores)
    affectstream bench --quick         # CI smoke run: every figure at reduced sizes (< ~2 min)
    affectstream bench --json out.json --skip-e2e --skip-caption --shapes minilm
    affectstream bench --int8-gate models/default   # only the int8 quality gate, written next to the model

OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE, set here before torch loads unless already set):
with the default spin-waiting, a host whose cores are shared with other processes loses 2-5x on every
small op, because each parallel region waits for a descheduled sibling thread (measured: naive per-post
inference 15 -> 70 posts/s on 2 busy cores). Worker processes started by the bench inherit it, and the
Hub's switch: the command runs packaged models only, with the Hub off (``model.hub``) unless HF_HUB_OFFLINE is set.
"""
from __future__ import annotations

import contextlib
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede libgomp's start (the torch import)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    posts: int = 512                       # posts per serving round
    naive_posts: int = 64                  # posts per naive / pipeline round
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    rounds: int = 3
    roberta_layers: int | None = None      # None: the real 12 layers
    roberta_posts: int = 128
    roberta_naive_posts: int = 16
    peak_seconds: float = 1.5
    burst: int = 2000                      # e2e: posts in the max-rate burst
    load_seconds: float = 15.0             # e2e: seconds per load level
    goal_rounds: int = 3                   # e2e: 50 % rounds, each on a fresh pipeline (the p99 goal's spread)
    caption_images: int = 32               # images through a caption worker (memory figure)
    offline_images: int = 64
    offline_rounds: int = 2
    vlm_images: int = 4
    vlm_batch: int = 4
    vlm_tokens: int = 24
    vlm_image_size: int | None = None      # None: BLIP-base's 384 px
    cache_lookups: int = 20_000
    mention_posts: int = 20_000            # brands: posts through the mention matcher per round
    brands_model: str = "models/default"   # brands: a target-aware model directory for the (post, target) cost
    peers_model: str = "models/default"    # peers: the served model (the scratch MiniLM when it is absent)
    peer_posts: int = 512                  # peers: posts per round, every variant and batch size
    rss_posts: int = 512                   # peers: posts served by each backend's memory probe
    int8_gate: bool = True                 # run the int8 quality gate on the peers' model first
    drivers: tuple[int, int] = (200, 1000)  # drivers (bench/drivers.py): sink batches per variant, brands × 7 days


FULL = Sizes()
QUICK = Sizes(posts=64, naive_posts=8, batch_sizes=(1, 8, 32, 64), rounds=1, roberta_layers=2, roberta_posts=64,
              roberta_naive_posts=4, peak_seconds=0.3, burst=200, load_seconds=2.0, goal_rounds=1, caption_images=4,
              offline_images=32, offline_rounds=1, vlm_images=1, vlm_batch=1, vlm_tokens=4, vlm_image_size=96,
              cache_lookups=2_000, mention_posts=2_000, peer_posts=64, rss_posts=32, int8_gate=False, drivers=(20, 20))


def machine() -> dict:
    import torch

    from affectstream.model.device import cpu_has_bf16_units, cpu_model
    from affectstream.model.serving import cpu_isa

    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "bf16_units": cpu_has_bf16_units(), "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "isa": cpu_isa(),
        "load_average_start": os.getloadavg()[0],
        "load_averages_start": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(ImportError):
        import transformers

        info["transformers"] = transformers.__version__
    return info


def run_bench(sizes: Sizes, *, shapes: tuple[str, ...], e2e: bool, caption: bool, device: str,
              retrain: bool = False, say=print) -> dict:
    import torch

    from affectstream.bench import classify, workload
    from affectstream.model.device import pick_device

    dev = pick_device(device)
    root = workload.scratch_dir()
    results: dict = {"machine": machine(), "sizes": asdict(sizes), "device": dev.type, "scratch": str(root)}
    say(f"affectstream bench: device {dev.type}, scratch {root}")
    built = []
    if "minilm" in shapes:
        built.append((workload.minilm_dir(root), sizes.posts, sizes.naive_posts))
    if "roberta-base" in shapes:
        built.append((classify.roberta_base_dir(root, sizes.roberta_layers), sizes.roberta_posts,
                      sizes.roberta_naive_posts))
    served = served_shape(sizes, root)
    say("matmul peaks ...")
    results["peaks_gflops"] = classify.peaks([shape for shape, _, _ in built] + [served], dev, sizes.peak_seconds)
    results["classify"] = {}
    for shape, n, naive_n in built:
        say(f"classify, model only: {shape.name}")
        results["classify"][shape.name] = classify.model_only(
            shape, root, pairs=workload.posts(n), batch_sizes=sizes.batch_sizes, naive_posts=naive_n,
            rounds=sizes.rounds, device=device, say=say)
        torch.cuda.empty_cache() if dev.type == "cuda" else None
    results["peers"] = peer_rows(sizes, served, root, results["peaks_gflops"], say)
    results["brands"] = brand_rows(sizes, device, say)
    from affectstream.bench.model_rows import run_rows

    results.update(run_rows(posts=sizes.peer_posts, rounds=sizes.rounds, device=device, root=root,
                            peers_model=sizes.peers_model, retrain=retrain, drivers=sizes.drivers, say=say))
    if e2e and built:
        from affectstream.bench import e2e as e2e_bench

        from affectstream.streaming.worker.settings import Settings

        # the served model (models/default when deployed) on the worker's own default backend: what a
        # user's classify worker runs, memory included
        backend = Settings().classify.inference_backend
        say(f"end to end (real broker + Redis, a caption and a classify worker; {served.name}, {backend}) ...")
        results["e2e"] = e2e_bench.run(
            served.directory, burst=sizes.burst, load_seconds=sizes.load_seconds, loads=(0.25, 0.5, 0.8),
            batch_max=32, batch_window_s=0.05, device=device, threads=0, pairs=workload.posts(512, seed=1),
            caption_images=sizes.caption_images if caption else 0, say=say, inference_backend=backend,
            goal_rounds=sizes.goal_rounds)
        results["e2e"]["shape"] = served.name
    if caption:
        from affectstream.bench import caption as caption_bench

        say("captioning ...")
        results["caption"] = caption_bench.run(
            root, offline_n=sizes.offline_images, offline_rounds=sizes.offline_rounds, vlm_n=sizes.vlm_images,
            vlm_batch=sizes.vlm_batch, vlm_tokens=sizes.vlm_tokens, vlm_image_size=sizes.vlm_image_size,
            cache_lookups=sizes.cache_lookups, device=device, say=say)
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    results["targets"] = targets(results)
    return results


def served_shape(sizes: Sizes, root: Path):
    """The served model for the peers rows: `sizes.peers_model` when deployed, else the scratch MiniLM."""
    from affectstream.bench import workload

    directory = Path(sizes.peers_model)
    if not (directory / "model.safetensors").exists():
        return workload.minilm_dir(root)
    config = json.loads((directory / "config.json").read_text())["encoder_config"]
    return workload.Shape(directory.name, directory, config)


def peer_rows(sizes: Sizes, served, root: Path, peaks: dict, say=print) -> dict:
    """The int8 gate (full run), serving against its peers, the served backend's forward share of its peak,
    and each backend's peak RSS. CPU only: ONNX Runtime runs on the CPU here."""
    import gc

    from affectstream.bench import classify, peers

    gate = None
    if sizes.int8_gate:
        from affectstream.training.int8_gate import run_gate

        from affectstream.model.serving import read_gate

        try:  # a gate measured on these very weights (int8_gate.json) is read, not measured again
            gate = read_gate(served.directory) or run_gate(served.directory, say=lambda msg: say(f"  {msg}"))
        except (OSError, RuntimeError) as e:  # VADER not cached and not fetchable (offline): no gate this run
            say(f"  int8 gate skipped: {type(e).__name__}: {e}")
    say(f"peers: {served.directory} ...")
    p = peers.run_peers(served.directory, root, posts=sizes.peer_posts, batch_sizes=sizes.batch_sizes,
                        rounds=sizes.rounds, say=say)
    predictors = p.pop("predictors")
    texts, _ = peers.peer_posts(sizes.peer_posts)
    auto = predictors[p["auto_backend"]]
    forward = classify.forward_utilisation(served, auto, [(t, "") for t in texts], batch=32, rounds=sizes.rounds)
    forward["peak_key"], forward["peak_gflops"] = classify.peak_for(peaks, served.name, auto)
    forward["forward_share"] = forward["forward_gflops"] / forward["peak_gflops"] if forward["peak_gflops"] else 0.0
    p["forward"] = forward
    del predictors, auto
    gc.collect()
    say("peers: peak RSS per backend (a fresh process each) ...")
    p["rss_mb"] = peers.serving_rss(served.directory, posts=sizes.rss_posts)
    if gate:
        p["int8_gate"] = gate
    return p


def brand_rows(sizes: Sizes, device: str, say=print) -> dict:
    """Brand-level sentiment: mention matching speed, and the cost of (post, target) classification against
    post-level classification with the same target-aware model (skipped when none is deployed)."""
    from affectstream.bench.mentions import mention_matching_rate

    say("brands: mention matching ...")
    out: dict = {"mentions": mention_matching_rate(n_brands=1000, n_posts=sizes.mention_posts, rounds=sizes.rounds)}
    if (Path(sizes.brands_model) / "model.safetensors").exists():
        from affectstream.bench.targets import bench_targets
        from affectstream.model.predictor import BatchPredictor

        say(f"brands: (post, target) cost with {sizes.brands_model} ...")
        predictor = BatchPredictor.from_directory(sizes.brands_model, device=device)
        out["targets"] = bench_targets(predictor, rounds=sizes.rounds)
    return out


def model_only_rate(r: dict, e2e: dict) -> float | None:
    """The model alone at the end-to-end batch size, same run: the classify rows of a scratch shape, else the
    peers table's serving row on the backend the workers ran (`auto` as resolved there)."""
    c = r.get("classify", {}).get(e2e["shape"])
    if c:
        return c["serving_posts_per_s"].get(e2e["batch_max"])
    p = r.get("peers") or {}
    row = p.get("rows", {}).get(e2e["batch_max"])
    backend = e2e.get("inference_backend", "torch")
    backend = p.get("auto_backend", "torch") if backend == "auto" else backend
    return row["serving"].get(backend) if row else None


def targets(r: dict) -> list[dict]:
    """The issue's targets, each met or not (never asserted: measurements, not tests)."""
    out = []

    def add(name: str, value: float | None, goal: float, unit: str = "x") -> None:
        if value is None:
            return
        out.append({"target": name, "value": round(value, 3), "goal": goal, "unit": unit, "met": value >= goal})

    for name, c in r.get("classify", {}).items():
        best = max(c["serving_posts_per_s"].values())
        add(f"{name}: serving / naive", best / c["naive_posts_per_s"], 10)
        add(f"{name}: serving / HF pipeline fp32 batch 1", best / c["pipeline_posts_per_s"], 3)
        precision = "bf16" if c["dtype_serving"] == "bfloat16" else "fp32"
        peak = r.get("peaks_gflops", {}).get(f"{precision}_ffn_{name}")
        if peak:
            add(f"{name}: forward@{c['forward_batch']} (torch) / {precision} FFN-shape peak", c["forward_gflops"] / peak,
                0.30, "share")
    if r.get("peers"):
        from affectstream.bench.peers import peer_targets

        out += peer_targets(r["peers"])
    e2e = r.get("e2e")
    if e2e and "max_posts_per_s" in e2e:
        model_rate = model_only_rate(r, e2e)
        if model_rate:
            add("e2e sustained / model-only (same batch)", e2e["max_posts_per_s"] / model_rate, 0.80, "share")
            goal = e2e.get("goal")
            if goal:
                budget_ms = e2e["budget_ms"]  # classify window + 2 x the model alone on a batch, same run
                add(f"p99 at 50% load within window + 2 x batch compute (median of {len(goal['p99_rounds_ms'])} "
                    f"fresh pipelines)", budget_ms / max(goal["p99_median_ms"], 1e-6), 1.0,
                    f"budget {budget_ms:.0f} ms / p99")
    from affectstream.bench.model_rows import rows_targets

    out += rows_targets(r)
    cap = r.get("caption")
    if cap:
        add("offline describer images/s", cap["offline_images_per_s"], 5, "images/s")
    brands = r.get("brands", {})
    if "mentions" in brands:
        add("mention matching posts/s, 1 core, 1,000 brands x 5 terms", brands["mentions"]["posts_per_s"], 50_000,
            "posts/s")
    if "targets" in brands:  # a cost: lower is better, so the goal is on its inverse
        add("post-level / (post, target) throughput", 1 / brands["targets"]["cost_ratio"], round(1 / 1.3, 3),
            "share; cost <= 1.3x")
    return out


def table(r: dict) -> str:
    m = r["machine"]
    lines = [f"affectstream bench — {m['date']}",
             f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
             f"bf16 units: {m['bf16_units']}, GPU: {m['gpu'] or 'none'}, OMP_WAIT_POLICY={m['omp_wait_policy']}, "
             f"load average {m['load_average_start']:.1f} -> {m.get('load_average_end', float('nan')):.1f}",
             "ISA: " + ", ".join(f"{flag} {'yes' if on else 'no'}" for flag, on in m.get("isa", {}).items()), ""]
    if r.get("device") != "cuda":
        lines += ["GPU section: skipped (no CUDA device visible to torch; on a CUDA machine `--device auto` runs the "
                  "models, matmul peaks and the VLM there, in bf16)", ""]
    p = r.get("peaks_gflops", {})
    if p:
        lines.append("matmul peak (GFLOP/s, best of the run): " + ", ".join(f"{k} {v:.0f}" for k, v in p.items()))
        lines.append("")
    for name, c in r.get("classify", {}).items():
        lines += [f"classify, model only — {name} (tokenize → forward → top-K → rationale → JSON), posts/s",
                  "| batch | naive fp32, 1 post/call | HF pipeline fp32, batch 1 | affectstream serving torch "
                  f"({c['dtype_serving']}) | serving/naive | serving/pipeline |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for b, v in c["serving_posts_per_s"].items():
            lines.append(f"| {b} | {c['naive_posts_per_s']:.1f} | {c['pipeline_posts_per_s']:.1f} | {v:.1f} | "
                         f"{v / c['naive_posts_per_s']:.1f}x | {v / c['pipeline_posts_per_s']:.1f}x |")
        peak = p.get("bf16_2048")
        ffn = p.get(f"bf16_ffn_{name}")
        lines.append(
            f"forward only @ batch {c['forward_batch']}: {c['forward_posts_per_s']:.0f} posts/s, "
            f"{c['forward_gflops']:.0f} GFLOP/s useful ({c['tokens_per_post']:.1f} real tokens/post, "
            f"{c['flops_per_post'] / 1e9:.2f} GFLOP/post, padding {100 * c['padding_share']:.0f}%)"
            + (f" = {100 * c['forward_gflops'] / peak:.0f}% of bf16 2048³ peak" if peak else "")
            + (f", {100 * c['forward_gflops'] / ffn:.0f}% of the bf16 FFN-shape peak" if ffn else "")
            + (f", {100 * c['forward_gflops'] / p['fp32_2048']:.0f}% of fp32 2048³ peak" if p.get("fp32_2048") else ""))
        lines.append("")
    if r.get("peers"):
        from affectstream.bench.peers import peers_table

        lines += peers_table(r["peers"])
    e = r.get("e2e")
    if e and "max_posts_per_s" in e:
        from affectstream.bench.e2e import table as e2e_table

        lines += [e2e_table(e), ""]
    from affectstream.bench.model_rows import rows_table

    lines += rows_table(r)
    brands = r.get("brands", {})
    if brands:
        m = brands["mentions"]
        lines += ["brands",
                  f"mention matching, 1 core: {m['posts_per_s']:.0f} posts/s over {m['brands']} brands / {m['terms']} "
                  f"terms ({m['mentions_per_post']:.2f} mentions per post, matcher built in {m['build_s']:.2f} s)"]
        t = brands.get("targets")
        lines.append(
            f"(post, target) on the sample's brand mix ({t['targets_per_post']:.2f} targets/post, target-aware "
            f"{t['target_aware']}): post-level {t['post_level_posts_per_s']:.1f} posts/s, per-target "
            f"{t['target_level_posts_per_s']:.1f} posts/s = {t['cost_ratio']:.2f}x the cost"
            if t else f"(post, target) cost: skipped (no target-aware model at {FULL.brands_model})")
        lines.append("")
    cap = r.get("caption")
    if cap:
        v = cap["vlm"]
        lines += ["captioning",
                  f"offline describer (EfficientNet-Lite0 + RapidOCR + colours), batch 32, 1 in 4 images with text: "
                  f"{cap['offline_images_per_s']:.1f} images/s",
                  f"vlm: {v['shape']} (random weights, {r['device']}), batch {v['batch']}, {v['max_new_tokens']} new "
                  f"tokens: {cap['vlm_images_per_s']:.2f} images/s",
                  "caption cache hit (CaptionCache.get_caption): "
                  + ", ".join(f"{k} {val:.0f} lookups/s" for k, val in cap["cache_hits_per_s"].items()), ""]
        lines.append("")
    if r.get("targets"):
        lines += ["targets", "| target | value | goal | met |", "|---|---:|---:|:---:|"]
        for t in r["targets"]:
            lines.append(f"| {t['target']} | {t['value']} | {t['goal']} ({t['unit']}) | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)


@click.command("bench")
@click.option("--quick", is_flag=True, help="CI smoke run: every figure at reduced sizes (< ~2 min).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the results here.")
@click.option("--skip-e2e", is_flag=True, help="Skip the broker + Redis end-to-end part (and worker memory).")
@click.option("--skip-caption", is_flag=True, help="Skip captioning (offline describer, VLM, cache).")
@click.option("--shapes", default="minilm,roberta-base", show_default=True,
              help="Encoder shapes for the classify part, comma-separated: minilm, roberta-base.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--rounds", type=int, default=None, help="Timing rounds per variant (default: the preset's).")
@click.option("--int8-gate", "gate_dir", type=click.Path(file_okay=False), default=None,
              help="Only run the int8 quality gate on this model directory (writes int8_gate.json) and exit.")
@click.option("--gate-data", default=None,
              help="Folder holding twitter2015/ and twitter2017/ for the int8 gate [default: $AFFECTSTREAM_DATA or ./data]; a missing set is recorded in the gate.")
@click.option("--retrain-bench", is_flag=True, help="Also time the retraining job (trains the default preset twice).")
def bench(quick: bool, json_path: str | None, skip_e2e: bool, skip_caption: bool, shapes: str, device: str,
          rounds: int | None, gate_dir: str | None, gate_data: str, retrain_bench: bool) -> None:
    """Speed of every path, side by side: naive vs peers vs serving, MFU, end to end, captioning, memory."""
    from affectstream.model.hub import packaged_models_only

    packaged_models_only()
    if gate_dir:
        from affectstream.training.int8_gate import run_gate

        gate = run_gate(gate_dir, gate_data, say=lambda msg: click.echo(msg, err=True))
        click.echo(json.dumps(gate, indent=2))
        click.echo(gate["card_line"])
        if json_path:
            Path(json_path).write_text(json.dumps(gate, indent=2))
        raise SystemExit(0 if gate["passed"] else 1)
    sizes = QUICK if quick else FULL
    if rounds:
        sizes = replace(sizes, rounds=rounds)
    if "torch" in sys.modules and os.environ.get("OMP_WAIT_POLICY") != "PASSIVE":
        click.echo("note: torch was loaded before the bench could set OMP_WAIT_POLICY=PASSIVE", err=True)
    started = time.monotonic()
    results = run_bench(sizes, shapes=tuple(s.strip() for s in shapes.split(",") if s.strip()),
                        e2e=not skip_e2e, caption=not skip_caption, device=device, retrain=retrain_bench,
                        say=lambda msg: click.echo(msg, err=True))
    results["seconds"] = time.monotonic() - started
    click.echo(table(results))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    bench()
