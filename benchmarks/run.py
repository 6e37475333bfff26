"""Throughput and memory benchmarks; prints one JSON line per case.

  python benchmarks/run.py                       # every case
  python benchmarks/run.py --only vqvae_audio input_pipeline

Every training-step case times the real compiled step of its task (``avrep.training.step.compile_train_step``
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
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from avrep.tasks import build_task  # noqa: E402
from avrep.tasks.vqmae import MODELS as VQMAE_MODELS  # noqa: E402
from avrep.training import mesh as mesh_lib
from avrep.training import step as step_lib  # noqa: E402  (no data pipeline: benchmarks/device.py)
from avrep.training.optimizer import make_optimizer  # noqa: E402
from benchmarks import utilization  # noqa: E402
from configs import dvae, vqmae, vqmdvae, vqvae_audio, vqvae_visual  # noqa: E402
from configs.common import VQMAE_S_HOP  # noqa: E402


def bench_preprocess(*args, **kwargs):
    """``benchmarks.preprocess.bench_preprocess``, imported when run: it needs the corpus builders (TFDS),
    which the training-step cases, and the device benchmark that imports this file, do not."""
    from benchmarks.preprocess import bench_preprocess as run

    return run(*args, **kwargs)


def _peak_memory_mb() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # host peak RSS (CPU backend)


def _step_memory_mb(compiled) -> float | None:
    """Device memory one call of ``compiled`` needs (arguments, outputs not aliased to them, temporaries), from
    XLA's memory analysis: per case, unlike the process's peak."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    size = stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
    return round((size + stats.temp_size_in_bytes) / 2**20, 1)


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


# Command-line overrides of every training-step case (main: --dtype, --batch): config key -> value.
OVERRIDES: dict[str, object] = {}


def _apply_overrides(config):
    """``OVERRIDES`` written into a case's config (``model.dtype``, ``data.examples_per_batch``)."""
    for key, value in OVERRIDES.items():
        block, field = key.split(".")
        config[block][field] = value
    return config


def _compile(step, *args):
    """(the compiled step, seconds the lowering and compilation took)."""
    t = time.perf_counter()
    compiled = step.lower(*args).compile()
    return compiled, time.perf_counter() - t


def _step_result(name, *, items, unit, params, per_step, compiled, task, compile_s, input_wait=0.0, **extra):
    """One JSON line of a training-step case. GFLOP/s and ``mfu`` (benchmarks/utilization.py: against the
    device's peak for the step's dtype; on CPU, the measured matmul ceiling) from XLA's cost analysis of
    ``compiled`` (a step compiled for counting: loops count their body once). ``input_wait``: the fraction of
    the step spent waiting for input; 0 for these cases, whose batch is on the device before timing."""
    flops = utilization.step_flops(compiled)
    dtype = str(task.compute_dtype)
    return {
        "name": name,
        "throughput": round(items / per_step, 1),
        "unit": unit,
        "batch": items,
        **extra,
        "dtype": dtype,
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "step_time_ms": round(per_step * 1e3, 2),
        "gflops_per_s": round(flops / per_step / 1e9, 1),
        **utilization.utilization(flops, per_step, dtype),
        "input_wait": input_wait,
        "compile_s": round(compile_s, 2),
        "step_memory_mb": _step_memory_mb(compiled),
        "peak_memory_mb": round(_peak_memory_mb(), 1),
        "device": _device(),
    }


def bench_train_step(name, config, unit_per_example, steps, *, prepare=None):
    """``prepare(task, batch) -> batch`` turns the random batch into what the timed step is given."""
    task = build_task(_apply_overrides(config))
    mesh = mesh_lib.make_mesh(config.mesh)
    tx, schedule = make_optimizer(config.optimizer, 1000)
    state = step_lib.create_state(task, tx, mesh, jax.random.key(0))
    step = step_lib.compile_train_step(task, tx, schedule, mesh, state)
    batch = _random_batch(task, np.random.default_rng(0))
    batch = mesh_lib.global_batch(prepare(task, batch) if prepare else batch, mesh)
    rng = jax.random.key(1)
    compiled, compile_s = _compile(step, state, batch, rng)
    per_step, state = _time_step(lambda s: compiled(s, batch, rng)[0], state, steps)
    return _step_result(
        name,
        items=task.pipeline.examples_per_batch * unit_per_example,
        unit=config.bench_unit,
        params=state["params"],
        per_step=per_step,
        compiled=compiled,
        task=task,
        compile_s=compile_s,
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
        variant = setting
        if modality == "audio" and int(config.audio.hop) == VQMAE_S_HOP:  # VQ-MAE-S: its tokenizer's STFT
            variant = ":vqmae_s"
        run = os.path.join(root, f"vqvae_{modality}{variant.replace(':', '_')}")
        if not os.path.isdir(run):
            tokenizer = module.get_config(variant[1:] or None)
            task = build_task(tokenizer)
            write_run(run, tokenizer, task.init_variables(jax.random.key(0), task.dummy_batch()))
        config.tokenizers[modality] = run


def _random_like_dummy_batch(task, rng, scale: float = 1.0) -> dict:
    """A random batch of the shapes of the task's dummy batch with ``examples_per_batch`` examples: uint8 frames
    uniform, floats N(0, scale²) (waveforms, stage-2 features), integers uniform over the codebook (VQ-MAE index
    grids)."""
    batch = {}
    for key, like in task.dummy_batch().items():
        shape = (task.pipeline.examples_per_batch, *like.shape[1:])
        if like.dtype == np.uint8:  # video frames
            batch[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif np.issubdtype(like.dtype, np.integer):
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
    task = build_task(_apply_overrides(config))
    mesh = mesh_lib.make_mesh(config.mesh)
    tx, schedule = make_optimizer(config.optimizer, 1000)
    tx = task.optimizer(tx)
    state = step_lib.create_state(task, tx, mesh, jax.random.key(0))
    step = step_lib.compile_train_step(task, tx, schedule, mesh, state)
    batch = mesh_lib.global_batch(_random_like_dummy_batch(task, np.random.default_rng(0)), mesh)
    rng = jax.random.key(1)
    step, compile_s = _compile(step, state, batch, rng)
    counted = step
    if jax.default_backend() == "cpu":  # the attention loop's body is counted once: count the batched form
        with batched_attention():
            counted = step_lib.compile_train_step(task, tx, schedule, mesh, state).lower(state, batch, rng).compile()
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
        task=task,
        compile_s=compile_s,
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
    # Clock frames: video frames, or audio frames for the audio-only model (its own rate, avrep/tasks/vqmae.py).
    c.data.frames_per_example = defaults.visual_frames if kind == "av" else defaults.audio_frames
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
    bins) on power spectrograms of random speech windows, ``frames`` STFT frames, batch 128. The spectrograms are
    computed before timing, as the authors' timed step receives them from its data loader (forward, IS + KL loss,
    backward, Adam); training computes them on the device, about 30 ms per batch on this CPU."""
    config = dvae.get_config(f"{kind},paper")
    config.data.frames_per_example = frames
    if "scheduled_sampling" in config.model:
        config.model.scheduled_sampling = False  # the authors' timed SRNN is teacher-forced
    config.bench_unit = "sequences/s"
    config.train.output_bias_utterances = 0  # random batches: no corpus to take the mean spectrum from
    result = bench_train_step(name, config, 1, steps, prepare=lambda task, b: {"power": np.asarray(task.features(b))})
    result.update(input="power spectrograms")
    ref = DVAE_AUTHORS_SEQ_PER_S.get((kind, frames))
    result.update(time_steps=frames)
    if ref is not None:
        result.update(
            authors_throughput=ref,
            speedup_vs_authors=round(result["throughput"] / ref, 2),
            authors_machine=DVAE_AUTHORS_MACHINE,
        )
    return result


# Lin's Table 6.3: RVAE-VEM U-NA on WSJ0-QUT, 300 iterations, real-time factor 27.91 (the authors' code, one
# utterance at a time; their machine is not stated in the table).
SE_ITERATIONS = 300
SE_AUTHORS_RTF = 27.91


def bench_se_vem(name, batch, iterations, seconds=2.0):
    """Real-time factor of RVAE-VEM U-NA (avrep.models.enhancement.vem, DVAE_SE's RVAE sizes, random weights:
    only the shapes matter) on ``batch`` utterances of ``seconds`` s enhanced as one compiled program:
    seconds of processing (STFT, VEM, Wiener filter; compilation excluded, reported apart) per second of audio."""
    from avrep.models import dvae as dvae_models
    from avrep.models import enhancement as se

    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(int(16000 * seconds)).astype(np.float32) for _ in range(batch)]
    model = dvae_models.build_model("dvae_se/RVAE")
    data = se.batch_stft(waves)
    variables = model.init({"params": jax.random.key(0)}, jnp.abs(data.X[:1]) ** 2, sample=False)
    settings = se.VEMSettings(num_iterations=iterations)

    def run():
        data = se.batch_stft(waves)
        out = se.enhance_vem(model, variables, data.X, data.mask, settings=settings, key=jax.random.key(1))
        return jax.block_until_ready(out["S_hat"])

    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    audio = batch * seconds
    return dict(
        name=name,
        device=_device(),
        batch=batch,
        utterance_s=seconds,
        iterations=iterations,
        seconds=round(elapsed, 2),
        compile_s=round(first - elapsed, 2),
        rtf=round(elapsed / audio, 3),
        rtf_per_100_iterations=round(elapsed / audio * 100 / iterations, 4),
        authors_rtf=SE_AUTHORS_RTF if iterations == SE_ITERATIONS else None,
        peak_memory_mb=round(_peak_memory_mb(), 1),
    )


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
    parser.add_argument(
        "--se_iterations", type=int, default=SE_ITERATIONS, help="VEM iterations of the se_vem cases (thesis: 300)"
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "auto"),
        help="computation dtype of every training-step case (config key model.dtype; default: the config's)",
    )
    parser.add_argument(
        "--batch", type=int, help="examples per batch of every training-step case (data.examples_per_batch)"
    )
    args = parser.parse_args()
    if args.dtype:
        OVERRIDES["model.dtype"] = args.dtype
    if args.batch:
        OVERRIDES["data.examples_per_batch"] = args.batch

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
    for batch in (1, 8, 32):
        cases[f"se_vem_rvae_b{batch}"] = lambda batch=batch: bench_se_vem(
            f"se_vem_rvae_b{batch}", batch, args.se_iterations
        )
    for name, run in cases.items():
        if args.only is None or any(name == o or (o not in cases and name.startswith(o)) for o in args.only):
            print(json.dumps(run()), flush=True)


if __name__ == "__main__":
    main()
