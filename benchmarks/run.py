"""Throughput and memory benchmarks; prints one JSON line per case.

  python benchmarks/run.py                       # every case
  python benchmarks/run.py --only vqvae_audio input_pipeline

Every training-step case times the real compiled step of its task (``avrep.training.loop.compile_train_step``
of ``avrep.tasks.build_task(config)``: forward, loss, backward, optimizer), on random inputs of the
paper-setting shapes. Tokenizer cases featurize on device (the STFT for audio, uint8 -> float for video);
stage-2 and VQ-MAE cases read cached tokenizer outputs, as their training does, with random-weight tokenizer
runs standing in for trained ones (only their shapes matter). Input-pipeline cases time the Grain pipeline
over SynthAV records, in the same units.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from avrep.tasks import build_task  # noqa: E402
from avrep.tasks.vqmae import MODELS as VQMAE_MODELS  # noqa: E402
from avrep.training import loop  # noqa: E402
from avrep.training import mesh as mesh_lib
from avrep.training.optimizer import make_optimizer  # noqa: E402
from benchmarks.preprocess import bench_preprocess  # noqa: E402
from configs import dvae, vqmae, vqmdvae, vqvae_audio, vqvae_visual  # noqa: E402


def _peak_memory_mb() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # host peak RSS (CPU backend)


def _device() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()} ({os.cpu_count()} host cores)"


def _random_batch(task, rng):
    spec, framing = task.pipeline, task.framing
    e, k = spec.examples_per_batch, spec.frames_per_example
    if spec.kind != "frames":  # windows: waveforms of the task's own dummy-batch shapes
        return _random_like_dummy_batch(task, rng, scale=0.1)
    batch = {}
    if "audio" in spec.modalities:
        batch["audio"] = (0.1 * rng.standard_normal((e, k, framing.n_fft))).astype(np.float32)
    if "video" in spec.modalities:
        s = int(task.config.data.image_size)
        batch["video"] = rng.integers(0, 256, (e, k, s, s, 3), dtype=np.uint8)
    return batch


def _time_step(run, carry, steps, warmup=3):
    """Median seconds of ``carry = run(carry)`` over ``steps`` calls, after ``warmup`` calls (compile)."""
    for _ in range(warmup):
        carry = run(carry)
    jax.block_until_ready(carry)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        carry = run(carry)
        jax.block_until_ready(carry)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), carry


def _step_result(name, *, items, unit, params, per_step, compiled, **extra):
    """One JSON line of a training-step case; GFLOP/s from XLA's cost analysis of ``compiled`` (a step
    compiled for counting: loops count their body once)."""
    cost = compiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost or {}).get("flops", float("nan"))
    return {
        "name": name,
        "throughput": round(items / per_step, 1),
        "unit": unit,
        "batch": items,
        **extra,
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "step_time_ms": round(per_step * 1e3, 2),
        "gflops_per_s": round(flops / per_step / 1e9, 1),
        "peak_memory_mb": round(_peak_memory_mb(), 1),
        "device": _device(),
    }


def bench_train_step(name, config, unit_per_example, steps):
    task = build_task(config)
    mesh = mesh_lib.make_mesh(config.mesh)
    tx, schedule = make_optimizer(config.optimizer, 1000)
    state = loop.create_state(task, tx, mesh, jax.random.key(0))
    step = loop.compile_train_step(task, tx, schedule, mesh, state)
    batch = mesh_lib.global_batch(_random_batch(task, np.random.default_rng(0)), mesh)
    rng = jax.random.key(1)
    per_step, state = _time_step(lambda s: step(s, batch, rng)[0], state, steps)
    return _step_result(
        name,
        items=task.pipeline.examples_per_batch * unit_per_example,
        unit=config.bench_unit,
        params=state["params"],
        per_step=per_step,
        compiled=step.lower(state, batch, rng).compile(),
    )


def bench_input_pipeline(name, config, data_dir, unit_per_example, batches):
    from data_pipelines import pipelines, registry, sources

    registry.prepare(config.data.name, data_dir)
    task = build_task(config)
    source = sources.open_source(config.data.name, "train", data_dir)
    it = pipelines.training_iterator(source, task.pipeline, task.framing, seed=0, cache_mb=config.data.cache_mb)
    n = task.pipeline.examples_per_batch * unit_per_example

    def rate(num_batches):
        t = time.perf_counter()
        for _ in range(num_batches):
            next(it)
        return round(n * num_batches / (time.perf_counter() - t), 1)

    # The first epoch decodes whole records (cold); later epochs read the slim-record cache, which
    # is what a tokenizer run sees for almost all of its steps.
    cold = rate(batches)
    rate(max(len(source) // task.pipeline.examples_per_batch + 1 - batches, 0))
    return {
        "name": name,
        "throughput": rate(batches),
        "cold_throughput": cold,
        "unit": config.bench_unit,
        "batch": n,
        "params": 0,
        "dataset": config.data.name,
        "cache_mb": config.data.cache_mb,
        "peak_memory_mb": round(_peak_memory_mb(), 1),
        "device": f"host ({os.cpu_count()} cores, Grain default read threads)",
    }


def _random_tokenizers(config, root: str) -> None:
    """Random-weight tokenizer runs (``avrep.runs.write_run``) of the setting ``config`` reads, named in its
    ``tokenizers`` block: a stage-2 or VQ-MAE step reads only their shapes (its batch holds cached features)."""
    from avrep.runs import write_run

    setting = ":vqmae" if int(config.data.image_size) == 96 else ""
    for modality, module in (("audio", vqvae_audio), ("visual", vqvae_visual)):
        run = os.path.join(root, f"vqvae_{modality}{setting.replace(':', '_')}")
        if not os.path.isdir(run):
            tokenizer = module.get_config(setting[1:] or None)
            task = build_task(tokenizer)
            write_run(run, tokenizer, task.init_variables(jax.random.key(0), task.dummy_batch()))
        config.tokenizers[modality] = run


def _random_like_dummy_batch(task, rng, scale: float = 1.0) -> dict:
    """A random batch of the shapes of the task's dummy batch with ``examples_per_batch`` examples: floats
    N(0, scale²) (waveforms, stage-2 features), integers uniform over the codebook (VQ-MAE index grids)."""
    batch = {}
    for key, like in task.dummy_batch().items():
        shape = (task.pipeline.examples_per_batch, *like.shape[1:])
        if np.issubdtype(like.dtype, np.integer):
            module = task.module if not hasattr(task, "backbone") else task.backbone
            codes = getattr(module, f"{key.split('_', 1)[1]}_codes")
            batch[key] = rng.integers(0, codes, shape).astype(like.dtype)
        else:
            batch[key] = (scale * rng.standard_normal(shape)).astype(np.float32)
    return batch


def bench_cached_task_step(name, config, steps, unit, tokenizer_root, **extra):
    """The real compiled step of a task that reads cached tokenizer outputs (VQ-MDVAE stage 2, VQ-MAE), on
    random features or indices of the config's shapes. GFLOP/s from a compile with batched attention (XLA's
    cost analysis counts the CPU attention loop's body once)."""
    from avrep.nn.attention import batched_attention

    _random_tokenizers(config, tokenizer_root)
    task = build_task(config)
    mesh = mesh_lib.make_mesh(config.mesh)
    tx, schedule = make_optimizer(config.optimizer, 1000)
    tx = task.optimizer(tx)
    state = loop.create_state(task, tx, mesh, jax.random.key(0))
    step = loop.compile_train_step(task, tx, schedule, mesh, state)
    batch = mesh_lib.global_batch(_random_like_dummy_batch(task, np.random.default_rng(0)), mesh)
    rng = jax.random.key(1)
    with batched_attention():
        counted = loop.compile_train_step(task, tx, schedule, mesh, state).lower(state, batch, rng).compile()
    walls, cpus = [], []
    for _ in range(2):  # warm-up
        state = step(state, batch, rng)[0]
    jax.block_until_ready(state)
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        state = step(state, batch, rng)[0]
        jax.block_until_ready(state)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    per_step = float(np.median(walls))
    # On a shared host the wall clock depends on the other processes: the CPU seconds of this process per
    # step and the load average say how much of the machine the step had.
    extra.update(cpu_s_per_step=round(float(np.median(cpus)), 2), load_avg_1m=round(os.getloadavg()[0], 1))
    ref = AUTHORS_ITEMS_PER_S.get(name)
    if ref is not None:
        extra.update(
            authors_throughput=ref,
            authors_gflops_per_s=AUTHORS_GFLOPS_PER_S.get(name),
            speedup_vs_authors=round(task.pipeline.examples_per_batch / per_step / ref, 2),
            authors_machine=AUTHORS_MACHINE,
        )
    return _step_result(
        name,
        items=task.pipeline.examples_per_batch,
        unit=unit,
        params=state["params"],
        per_step=per_step,
        compiled=counted,
        **extra,
    )


# The authors' PyTorch code on a 2-core AMD EPYC (AVX2): VQ-MAE-AV SAF-SAF, batch 16, Dirichlet masking;
# VQ-MAE-S, frame masking 80 %, batch 32. Their CAF-CAF step was not measured; their draws are independent
# (vqmae_av_independent), ours paired by default (vqmae_av). Measured on another CPU than this benchmark may
# run on: compare only on the same machine.
AUTHORS_MACHINE = "2-vCPU AMD EPYC (AVX2)"
AUTHORS_ITEMS_PER_S = {"vqmae_av": 1.1, "vqmae_av_independent": 1.1, "vqmae_s": 3.1}
AUTHORS_GFLOPS_PER_S = {"vqmae_av": 38, "vqmae_av_independent": 38, "vqmae_s": 53}


def _stage2_config(batch: int):
    """VQ-MDVAE stage 2 at the paper's sizes (T = 30, features 512 + 2048), Adam, on cached features."""
    c = vqmdvae.get_config()
    c.data.examples_per_batch = batch
    return c


def _vqmae_config(kind: str, batch: int, **model):
    """A VQ-MAE step at the thesis's sizes (the modules' defaults: width 320, 12 / 4 blocks, 2 s clips)."""
    c = vqmae.get_config("audio,paper" if kind == "audio" else "paper")
    c.model = ml_collections.ConfigDict(dict(kind=kind, **model))
    defaults = VQMAE_MODELS[kind]()
    c.data.frames_per_example = defaults.visual_frames if kind == "av" else defaults.audio_frames // 2
    c.data.examples_per_batch = batch
    return c


# The authors' DVAE training step (forward, IS + KL loss, backward, Adam; their speech configurations, batch
# 128 x T frames x 513 bins), sequences/s on a 2-vCPU Intel Xeon with AVX-512 (2048^3 sgemm 317 GFLOP/s in torch).
DVAE_AUTHORS_MACHINE = "2-vCPU Intel Xeon (AVX-512)"
DVAE_AUTHORS_SEQ_PER_S = {
    ("vae", 50): 1383,
    ("dkf", 50): 623,
    ("storn", 50): 586,
    ("vrnn", 50): 338,
    ("srnn", 50): 451,
    ("srnn", 100): 223,
    ("srnn", 200): 75,
    ("rvae", 50): 439,
    ("rvae", 100): 213,
    ("rvae", 200): 79,
    ("dsae", 50): 287,
}


def bench_dvae(name, kind, frames, steps):
    """The DVAE task's real compiled step (configs/dvae.py: the DVAE benchmark's speech configurations at 513
    bins) on random speech windows of ``frames`` STFT frames, batch 128 (featurisation on device included)."""
    config = dvae.get_config(f"{kind},paper")
    config.data.frames_per_example = frames
    if "scheduled_sampling" in config.model:
        config.model.scheduled_sampling = False  # the authors' timed SRNN is teacher-forced
    config.bench_unit = "sequences/s"
    result = bench_train_step(name, config, 1, steps)
    ref = DVAE_AUTHORS_SEQ_PER_S.get((kind, frames))
    result.update(time_steps=frames)
    if ref is not None:
        result.update(
            authors_throughput=ref,
            speedup_vs_authors=round(result["throughput"] / ref, 2),
            authors_machine=DVAE_AUTHORS_MACHINE,
        )
    return result


def _audio_config():
    c = vqvae_audio.get_config()
    c.data.examples_per_batch, c.data.frames_per_example = 32, 32  # 1024 frames, the authors' batch
    c.bench_unit = "frames/s"
    return c


def _visual_config():
    c = vqvae_visual.get_config()
    c.data.examples_per_batch, c.data.frames_per_example = 32, 8  # 256 images of 64x64
    c.bench_unit = "images/s"
    return c


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="case names (exact) or prefixes of case names")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per training case")
    parser.add_argument(
        "--data_dir",
        default=os.path.expanduser("~/.cache/avrep/benchmark_data"),
        help="where SynthAV is generated for the input-pipeline cases",
    )
    parser.add_argument("--dataset", default="synthav/mdvae", help="dataset for the input-pipeline cases")
    args = parser.parse_args()

    def data_config(make):
        c = make()
        c.data.name = args.dataset
        return c

    tokenizers = os.path.join(args.data_dir, "random_tokenizers")

    def stage2(name, batch, steps):
        return bench_cached_task_step(name, _stage2_config(batch), steps, "sequences/s", tokenizers, time_steps=30)

    def vqmae_av(name, fusion, paired):
        config = _vqmae_config("av", 16, encoder_fusion=fusion, decoder_fusion=fusion, paired_ratios=paired)
        return bench_cached_task_step(
            name,
            config,
            max(args.steps // 2, 3),
            "clips/s",
            tokenizers,
            fusion=f"{fusion}-{fusion}",
            masking="dirichlet",
            paired_ratios=paired,
        )

    dvae_cases = {
        f"dvae_{kind}" + (f"_t{frames}" if frames != 50 else ""): (kind, frames)
        for kind, frames in [(k, 50) for k in ("vae", "dkf", "storn", "vrnn", "srnn", "rvae", "dsae")]
        + [("srnn", 100), ("srnn", 200), ("rvae", 100), ("rvae", 200)]
    }
    cases = {
        "vqvae_audio": lambda: bench_train_step("vqvae_audio", _audio_config(), 32, args.steps),
        "vqvae_visual": lambda: bench_train_step("vqvae_visual", _visual_config(), 8, args.steps),
        "input_pipeline_audio": lambda: bench_input_pipeline(
            "input_pipeline_audio", data_config(_audio_config), args.data_dir, 32, 20
        ),
        "input_pipeline_visual": lambda: bench_input_pipeline(
            "input_pipeline_visual", data_config(_visual_config), args.data_dir, 8, 20
        ),
        "mdvae_stage2": lambda: stage2("mdvae_stage2", 256, max(args.steps // 2, 3)),
        "mdvae_stage2_b1024": lambda: stage2("mdvae_stage2_b1024", 1024, max(args.steps // 4, 3)),
        "preprocess_av": lambda: bench_preprocess("preprocess_av", "ravdess", "vqmae", clips=8),
        "preprocess_audio": lambda: bench_preprocess("preprocess_audio", "emodb", "audio", clips=10),
        "vqmae_av": lambda: vqmae_av("vqmae_av", "saf", paired=True),
        "vqmae_av_independent": lambda: vqmae_av("vqmae_av_independent", "saf", paired=False),
        "vqmae_av_caf": lambda: vqmae_av("vqmae_av_caf", "caf", paired=True),
        "vqmae_s": lambda: bench_cached_task_step(
            "vqmae_s",
            _vqmae_config("audio", 32, mask_unit="frame", mask_ratio=0.8),
            max(args.steps // 2, 3),
            "clips/s",
            tokenizers,
            masking="frame 80%",
        ),
    }
    for name, (kind, frames) in dvae_cases.items():
        cases[name] = lambda name=name, kind=kind, frames=frames: bench_dvae(name, kind, frames, args.steps)
    for name, run in cases.items():
        if args.only is None or any(name == o or (o not in cases and name.startswith(o)) for o in args.only):
            print(json.dumps(run()), flush=True)


if __name__ == "__main__":
    main()
