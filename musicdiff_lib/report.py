"""``musicdiff evaluate``: score a checkpoint and write ``report.json``, ``report.md`` and plots.

Chapter: ``10_evaluation``. The recipe, in the order the report lists it:

1. **Held-out music.** ``n`` clips of the built-in dataset rendered with
   ``heldout_seed`` (the training data uses seed 0), at the length the model
   was trained on: their captions are the prompts, the clips the references.
2. **Generation.** One sample per caption (noise seed ``seed + i``), plus a
   second sample for the first ``diversity`` captions. Samples are kept in
   ``out/cache`` chunk by chunk, so a killed run resumes where it stopped.
3. **Everything is scored on the waveform**, re-encoded with the classifier's
   mel settings, so models with other mel settings (64 vs 128 mels) are judged
   by the same ear. Real clips are scored twice: as rendered ("real") and
   after the model's own mel → Griffin-Lim path ("real via vocoder"), which is
   the fair ceiling for generated audio.
4. **Similarity (the report's SSIM/MSE)** in the model's own mel space, as
   distributions: generated vs the real clip with the same caption, generated
   vs its nearest training crop (memorisation, with held-out real clips vs
   their nearest training crop as the reference), sample vs sample of the same
   caption (diversity).
5. **Adherence**: the attribute classifier's accuracy against what the caption
   states, for the attributes it recognises at ≥ 90% on real renders; the
   analytic detectors (tempo from ``librosa.beat``, drums from percussive
   energy) as a second opinion; ceiling, floor (``baselines``) and chance.
6. **Distribution distance**: Fréchet distance and KID between samples
   generated from the captions of one half of the held-out set and the real
   clips of the other half, against real half vs real half (the floor), in the
   classifier's embedding space and in hand-crafted features.
7. **Griffin-Lim**: spectral convergence and log-spectral distance of real
   clips against the number of iterations.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .config import find_in_parents, write_text_atomic
from .mel import MelCodec, MelConfig

USE_THRESHOLD = 0.90  # an attribute judges samples only if the classifier gets real renders this right
HELDOUT_SEED = 1  # the built-in training data is rendered with seed 0
CLASSIFIER_DIR = Path("checkpoints") / "classifier-cpu"
GL_ITERATIONS = (1, 2, 4, 8, 16, 32, 64, 128)


# -- inputs ------------------------------------------------------------------------------------------
def find_classifier(start: str | Path | None = None) -> Path | None:
    """``checkpoints/classifier-cpu`` in ``start`` (default: the working directory) or a parent, else None."""
    return find_in_parents(CLASSIFIER_DIR, start, markers=("config.json",))


def heldout_set(folder: str | Path, n: int, seconds: float, sample_rate: int, seed: int = HELDOUT_SEED,
                progress: bool = True) -> dict[str, Any]:
    """Render (or reuse) ``n`` built-in clips of dataset ``seed`` into ``folder``.

    Returns ``waves (n, samples)`` float32, ``captions``, ``attributes`` (one dict each).
    """
    from .audio import load_audio
    from .synth import write_dataset

    folder = Path(folder)
    write_dataset(folder, n, seed=seed, seconds=seconds, sample_rate=sample_rate, progress=progress)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    rows = sorted(rows, key=lambda r: r["index"])[:n]
    if len(rows) < n:
        raise RuntimeError(f"{folder}: only {len(rows)} of {n} held-out clips rendered (see its dataset.json)")
    waves = np.stack([load_audio(folder / r["file_name"], sample_rate, duration=seconds)[0] for r in rows])
    return {"waves": waves, "captions": [r["caption"] for r in rows], "attributes": [r["attributes"] for r in rows]}


def _digest(payload: Any) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]


def generate_cached(pipe, prompts: Sequence[str], seeds: Sequence[int], cache: str | Path, *, steps: int,
                    sampler: str, guidance_scale: float, griffin_lim_iters: int = 32, batch_size: int = 16,
                    seconds: float | None = None, progress: bool = True,
                    desc: str = "generate") -> dict[str, np.ndarray]:
    """Generate one clip per (prompt, seed) in chunks of ``batch_size``, each chunk saved to ``cache``.

    A chunk already on disk with the same settings is read back instead of sampled again, so an
    interrupted evaluation resumes. Returns ``mels (N, 1, n_mels, frames)`` and ``waves (N, samples)``.
    """
    from tqdm.auto import tqdm

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    settings = {"checkpoint": str(getattr(pipe, "checkpoint", "")), "weights": getattr(pipe, "weights", None),
                "steps": steps, "sampler": sampler, "guidance": guidance_scale, "gl": griffin_lim_iters,
                "seconds": seconds}
    mels, waves = [], []
    chunks = range(0, len(prompts), batch_size)
    quiet = {} if progress else {"disable": True}  # passing disable=False would override TQDM_DISABLE
    for start in tqdm(chunks, desc=desc, unit="batch", **quiet):
        part_prompts = list(prompts[start:start + batch_size])
        part_seeds = [int(s) for s in seeds[start:start + batch_size]]
        path = cache / f"{desc}-{_digest({**settings, 'prompts': part_prompts, 'seeds': part_seeds})}.npz"
        if path.exists():
            with np.load(path) as stored:
                mels.append(stored["mels"])
                waves.append(stored["waves"])
            continue
        result = pipe(part_prompts, steps=steps, sampler=sampler, guidance_scale=guidance_scale,
                      seed=part_seeds, griffin_lim_iters=griffin_lim_iters, progress=False, seconds=seconds)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, mels=result.mels.astype(np.float16), waves=result.waves.astype(np.float32))
        tmp.replace(path)
        mels.append(result.mels.astype(np.float16))
        waves.append(result.waves)
    return {"mels": np.concatenate(mels).astype(np.float32), "waves": np.concatenate(waves).astype(np.float32)}


def to_eval_mels(waves: np.ndarray, sample_rate: int, codec: MelCodec) -> torch.Tensor:
    """Waves ``(N, samples)`` at ``sample_rate`` → ``(N, 1, n_mels, frames)`` with ``codec``'s settings."""
    from .audio import resample

    target = codec.config.sample_rate
    if sample_rate != target:
        waves = np.stack([resample(w, sample_rate, target) for w in waves])
    with torch.no_grad():
        mels = torch.cat([codec.encode(torch.as_tensor(waves[i:i + 64], dtype=torch.float32))
                          for i in range(0, len(waves), 64)])
    return mels


def vocoder_roundtrip(waves: np.ndarray, codec: MelCodec, griffin_lim_iters: int = 32, seed: int = 0) -> np.ndarray:
    """What the model's own mel → Griffin-Lim path does to real clips: ``(N, samples)`` → ``(N, samples)``."""
    out = []
    with torch.no_grad():
        for i in range(0, len(waves), 32):
            mel = codec.encode(torch.as_tensor(waves[i:i + 32], dtype=torch.float32))
            generator = torch.Generator().manual_seed(seed + i)
            phases = 2 * math.pi * torch.rand(mel.shape[0], codec.config.n_freqs, mel.shape[-1], generator=generator)
            wave = codec.to_wave(mel, n_iter=griffin_lim_iters, init=phases)
            out.append(wave[:, : waves.shape[1]].numpy())
    result = np.concatenate(out)
    if result.shape[1] < waves.shape[1]:
        result = np.pad(result, ((0, 0), (0, waves.shape[1] - result.shape[1])))
    return result.astype(np.float32)


def real_side_scores(real_waves: np.ndarray, sample_rate: int, attributes: Sequence[dict], codec: MelCodec,
                     griffin_lim_iters: int, seed: int, folder: Path) -> dict[str, dict[str, Any]]:
    """The scores of the real clips that do not depend on the model's samples, kept in ``folder``.

    "real" and "real via vocoder" (``wave``, ``features``, ``detectors``): the slow part of scoring
    them (HPSS, librosa features, Griffin-Lim) is the same for every evaluation of every model with
    the same mel settings on the same held-out clips, so it is computed once and read back after.
    """
    from .evaluation import handcrafted_features

    key = _digest({"mel": codec.config.to_dict(), "gl": griffin_lim_iters, "seed": seed,
                   "n": len(real_waves), "samples": real_waves.shape[1], "sum": float(np.float64(real_waves).sum())})
    path = folder / f"real-scores-{key}.npz"
    if path.exists():
        with np.load(path) as stored:
            detectors = json.loads(str(stored["detectors"]))
            return {"real": {"wave": real_waves, "features": stored["features_real"], "detectors": detectors["real"]},
                    "real via vocoder": {"wave": stored["via"], "features": stored["features_via"],
                                         "detectors": detectors["real via vocoder"]}}
    via = vocoder_roundtrip(real_waves, codec, griffin_lim_iters, seed=seed)
    result = {"real": {"wave": real_waves}, "real via vocoder": {"wave": via}}
    for entry in result.values():
        entry["features"] = handcrafted_features(entry["wave"], sample_rate)
        entry["detectors"] = detector_accuracy(entry["wave"], sample_rate, attributes)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, via=via, features_real=result["real"]["features"], features_via=result["real via vocoder"]["features"],
             detectors=json.dumps({k: v["detectors"] for k, v in result.items()}))
    tmp.replace(path)
    return result


# -- similarity ----------------------------------------------------------------------------------------
def summarize(values) -> dict[str, float]:
    """Median, mean, spread (std), quartiles and count of a 1-D sample."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)), "q75": float(np.quantile(v, 0.75))}


def pair_scores(a: torch.Tensor, b: torch.Tensor) -> dict[str, np.ndarray]:
    """SSIM and MSE per pair of mels ``(N, 1, n_mels, frames)`` in [-1, 1] (data range 2)."""
    from .metrics import mse, ssim

    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    return {"ssim": ssim(a, b, data_range=2.0).numpy(), "mse": mse(a, b).numpy()}


def nearest_training(mels: torch.Tensor, train_cache: str | Path, stride: int = 8, chunk: int = 256,
                     progress: bool = True) -> dict[str, np.ndarray]:
    """For each mel ``(N, 1, n_mels, T)``, the closest ``T``-frame window (MSE) of any clip in a training cache.

    Windows start every ``stride`` frames. Returns ``index`` (clip), ``start`` (frame), ``mse`` and
    ``ssim`` with that window, and the windows themselves (``(N, 1, n_mels, T)``).
    """
    from safetensors import safe_open
    from tqdm.auto import tqdm

    from .data import load_index

    train_cache = Path(train_cache)
    index = load_index(train_cache)
    queries = torch.as_tensor(mels, dtype=torch.float32).flatten(1)  # (N, M·T)
    n_mels, width = mels.shape[-2], mels.shape[-1]
    if int(index["mel"]["n_mels"]) != n_mels:
        raise ValueError(f"{train_cache}: training mels have n_mels={index['mel']['n_mels']}, samples {n_mels}")
    best = torch.full((len(queries),), float("inf"))
    best_clip = torch.zeros(len(queries), dtype=torch.long)
    best_start = torch.zeros(len(queries), dtype=torch.long)
    q_sq = (queries ** 2).sum(1)
    offset = 0
    for shard in tqdm(index["shards"], desc="nearest training clip", unit="shard",
                      **({} if progress else {"disable": True})):  # keep TQDM_DISABLE working
        with safe_open(str(train_cache / shard["file"]), framework="pt") as f:
            stored = f.get_tensor("mel").float()  # (S, n_mels, frames)
        for first in range(0, stored.shape[0], chunk):
            block = stored[first:first + chunk]
            starts = list(range(0, block.shape[-1] - width + 1, stride))
            windows = torch.stack([block[..., s:s + width] for s in starts], 1).flatten(2)  # (b, W, M·T)
            flat = windows.flatten(0, 1)
            d = (q_sq[:, None] + (flat ** 2).sum(1)[None] - 2 * queries @ flat.T) / flat.shape[1]  # (N, b·W)
            value, where = d.min(1)
            better = value < best
            best = torch.where(better, value, best)
            best_clip = torch.where(better, offset + first + where // len(starts), best_clip)
            best_start = torch.where(better, torch.as_tensor(starts)[where % len(starts)], best_start)
        offset += stored.shape[0]
    # Read the winning windows back and score them exactly.
    windows = []
    items = index["items"]
    for clip, start in zip(best_clip.tolist(), best_start.tolist()):
        entry = items[clip]
        with safe_open(str(train_cache / index["shards"][entry["shard"]]["file"]), framework="pt") as f:
            windows.append(f.get_slice("mel")[entry["row"]:entry["row"] + 1, :, start:start + width].float())
    windows = torch.stack(windows)  # (N, 1, n_mels, T)
    scores = pair_scores(mels, windows)
    return {"index": best_clip.numpy(), "start": best_start.numpy(), "mse": scores["mse"],
            "ssim": scores["ssim"], "windows": windows.numpy(),
            "captions": [items[c]["caption"] for c in best_clip.tolist()]}


# -- adherence -------------------------------------------------------------------------------------------
def detector_accuracy(waves: np.ndarray, sample_rate: int, attributes: Sequence[dict]) -> dict[str, float]:
    """The analytic second opinion: tempo class from librosa's tempo estimate (``librosa.feature.tempo``,
    the successor of ``librosa.beat.tempo``) and drums present from percussive energy (HPSS)."""
    from .evaluation import DRUM_THRESHOLD, drums_present, estimate_tempo, percussive_ratio, tempo_class

    tempo = [tempo_class(estimate_tempo(w, sample_rate)) == a["tempo"] for w, a in zip(waves, attributes)]
    drums = [drums_present(percussive_ratio(w, sample_rate), DRUM_THRESHOLD) == (a["drums"] != "none")
             for w, a in zip(waves, attributes)]
    return {"tempo (librosa)": float(np.mean(tempo)), "drums (percussive energy)": float(np.mean(drums))}


def chance_levels() -> dict[str, float]:
    """Accuracy of a blind guess: uniform for the classifier's attributes (the built-in dataset samples
    each uniformly), the majority answer ("drums") for the drum detector."""
    from .synth import ATTRIBUTES

    levels = {name: 1.0 / len(values) for name, values in ATTRIBUTES.items()}
    levels["tempo (librosa)"] = 1.0 / len(ATTRIBUTES["tempo"])
    levels["drums (percussive energy)"] = 0.75  # "always drums": 3 of the 4 drum styles have drums
    return levels


# -- distribution distance ------------------------------------------------------------------------------
def distances(generated: np.ndarray, real_a: np.ndarray, real_b: np.ndarray, seed: int = 0) -> dict[str, float]:
    """FD and KID of generated-from-half-A vs real half B, and real A vs real B (the floor).

    Every set is z-scored with real half B's statistics first, so no feature dominates by its units
    and the cubic KID kernel stays in range. KID: mean ± std over 50 random subsets of half the set.
    """
    from .evaluation import frechet_distance, kernel_inception_distance, standardize

    real_b, generated, real_a = standardize(real_b, generated, real_a)
    subset = max(4, min(len(generated), len(real_a), len(real_b)) // 2)
    kid_gen = kernel_inception_distance(generated, real_b, subset_size=subset, subsets=50, seed=seed)
    kid_real = kernel_inception_distance(real_a, real_b, subset_size=subset, subsets=50, seed=seed)
    return {"fd": frechet_distance(generated, real_b), "fd_real_vs_real": frechet_distance(real_a, real_b),
            "kid": kid_gen[0], "kid_std": kid_gen[1], "kid_real_vs_real": kid_real[0],
            "kid_real_vs_real_std": kid_real[1]}


# -- the whole evaluation ------------------------------------------------------------------------------
def evaluate(checkpoint: str | Path, out: str | Path, n: int = 128, seed: int = 0, steps: int = 25,
             sampler: str = "dpmpp_2m", guidance_scale: float = 3.0, classifier: str | Path | None = None,
             train_data: str | Path | None = None, baselines: dict[str, str | Path] | None = None,
             diversity: int = 64, griffin_lim_iters: int = 32, gl_curve: bool = True,
             heldout_seed: int = HELDOUT_SEED, heldout_dir: str | Path | None = None, batch_size: int = 16,
             seconds: float | None = None, plots: bool = True, progress: bool = True,
             device=None) -> dict[str, Any]:
    """Score ``checkpoint`` on ``n`` held-out captions; write ``out/report.json``, ``report.md``, plots.

    ``classifier``: an attribute classifier folder (default: the repository's
    ``checkpoints/classifier-cpu``). ``train_data``: the model's training cache,
    for the memorisation check (skipped without it). ``baselines``: name →
    checkpoint scored on the same captions and seeds (e.g. ``{"unconditional":
    run}``, the same network trained with every caption dropped), sampled with
    guidance 0 (its null-condition prediction). Same
    arguments, same numbers: every random choice comes from ``seed`` and
    ``heldout_seed``. ``seconds``: clip length (default: what the model was
    trained on; the U-Net is convolutional, so models trained on different
    lengths can be compared at one). Returns the report as a dict. Chapter: ``10_evaluation``.
    """
    from .classifier import accuracy, embed_all, load_classifier
    from .evaluation import griffin_lim_curve, handcrafted_features
    from .pipeline import MusicDiffusionPipeline

    if n < 8 or n % 2:
        raise ValueError(f"n={n}: expected an even number of clips, at least 8 (the report splits them in halves)")
    if not 0 <= diversity <= n:
        raise ValueError(f"diversity={diversity}: expected between 0 and n={n}")
    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classifier_dir = Path(classifier) if classifier is not None else find_classifier()
    if classifier_dir is None:
        raise FileNotFoundError("no attribute classifier: pass classifier=DIR (checkpoints/classifier-cpu in "
                                "the repository, or one made with musicdiff_lib.classifier.train_classifier)")
    judge = load_classifier(classifier_dir)
    eval_codec = MelCodec(MelConfig.from_dict(judge.config.mel))
    pipe = MusicDiffusionPipeline.from_checkpoint(checkpoint, device=device)
    model_mel = pipe.mel_config
    if seconds is None:
        seconds = (model_mel.frames - 1) * model_mel.hop_length / model_mel.sample_rate
    elif not seconds > 0:
        raise ValueError(f"seconds={seconds!r}: expected a positive length")

    # 1. held-out clips at the model's sample rate and length
    heldout_dir = Path(heldout_dir or out / "heldout")
    held = heldout_set(heldout_dir, n, seconds, model_mel.sample_rate, seed=heldout_seed,
                       progress=progress)
    captions, attributes, real_waves = held["captions"], held["attributes"], held["waves"]
    sr = model_mel.sample_rate

    # 2. samples
    seeds = [seed + i for i in range(n)]
    kwargs = dict(steps=steps, sampler=sampler, guidance_scale=guidance_scale, griffin_lim_iters=griffin_lim_iters,
                  batch_size=batch_size, progress=progress, seconds=seconds)
    gen = generate_cached(pipe, captions, seeds, out / "cache", desc="generate", **kwargs)
    second = generate_cached(pipe, captions[:diversity], [seed + n + i for i in range(diversity)], out / "cache",
                             desc="diversity", **kwargs) if diversity else None
    floors = {}
    for name, path in (baselines or {}).items():
        other = MusicDiffusionPipeline.from_checkpoint(path, device=device)
        # w = 0: the null-condition prediction, the only path a caption-dropped network was trained on
        floors[name] = generate_cached(other, captions, seeds, out / "cache", desc=f"baseline-{name}",
                                       **{**kwargs, "guidance_scale": 0.0})

    # 3. one ear for everything
    real_side = real_side_scores(real_waves, sr, attributes, pipe.codec, griffin_lim_iters, seed, heldout_dir)
    real_via = real_side["real via vocoder"]["wave"]
    sets = {"generated": gen["waves"], "real": real_waves, "real via vocoder": real_via,
            **{name: g["waves"] for name, g in floors.items()}}
    eval_mels = {name: to_eval_mels(w, sr, eval_codec) for name, w in sets.items()}

    # 4. similarity in the model's own mel space
    real_mels = pipe.codec.encode(torch.as_tensor(real_waves)).clamp(-1, 1)
    width = min(real_mels.shape[-1], gen["mels"].shape[-1])  # seconds= may round the sampled width up
    real_mels, gen_mels = real_mels[..., :width], torch.as_tensor(gen["mels"])[..., :width]
    similarity = {"generated vs real (same caption)": pair_scores(gen_mels, real_mels),
                  "real vs real (different captions)": pair_scores(real_mels, real_mels.roll(1, 0))}
    if second is not None:
        similarity["generated vs generated (same caption)"] = pair_scores(
            gen_mels[:diversity], torch.as_tensor(second["mels"])[..., :width])
        similarity["generated vs generated (different captions)"] = pair_scores(gen_mels[:diversity],
                                                                                gen_mels[:diversity].roll(1, 0))
    memorisation = None
    if train_data is not None:
        near_gen = nearest_training(gen_mels, train_data, progress=progress)
        near_real = nearest_training(real_mels, train_data, progress=progress)
        similarity["generated vs nearest training crop"] = {"ssim": near_gen["ssim"], "mse": near_gen["mse"]}
        similarity["held-out real vs nearest training crop"] = {"ssim": near_real["ssim"], "mse": near_real["mse"]}
        closest = int(np.argmin(near_gen["mse"]))
        memorisation = {"closest_sample": closest, "closest_caption": captions[closest],
                        "closest_training_caption": near_gen["captions"][closest],
                        "closest_mse": float(near_gen["mse"][closest]),
                        "closer_than_any_real": float(np.mean(near_gen["mse"] < near_real["mse"].min()))}

    # 5. adherence
    judge_metrics = json.loads((classifier_dir / "metrics.json").read_text())
    heldout_accuracy = judge_metrics.get("accuracy", {})  # on held-out real renders (another dataset seed)
    adherence = {name: accuracy(judge, m, attributes) for name, m in eval_mels.items()}
    detectors = {name: real_side[name]["detectors"] if name in real_side else detector_accuracy(w, sr, attributes)
                 for name, w in sets.items()}
    for name in adherence:
        adherence[name].update(detectors[name])
    used = [a for a, acc in heldout_accuracy.items() if acc >= USE_THRESHOLD]
    for name in adherence:
        judged = [adherence[name][a] for a in used]
        adherence[name]["mean over used attributes"] = float(np.mean(judged)) if judged else float("nan")

    # 6. distribution distance: samples from half A's captions vs real half B, and real A vs real B
    half = n // 2
    embeddings = {name: embed_all(judge, m) for name, m in eval_mels.items()}
    features = {name: real_side[name]["features"] if name in real_side else handcrafted_features(w, sr)
                for name, w in sets.items()}
    distance = {"classifier embedding": {}, "hand-crafted features": {}}
    for name in sets:
        if name == "real":  # the reference every other set is compared with
            continue
        distance["classifier embedding"][name] = distances(
            embeddings[name][:half], embeddings["real"][:half], embeddings["real"][half:], seed=seed)
        distance["hand-crafted features"][name] = distances(
            features[name][:half], features["real"][:half], features["real"][half:], seed=seed)

    # 7. Griffin-Lim on real clips
    gl = griffin_lim_curve(torch.as_tensor(real_waves[:16]), replace(model_mel, frames=None), GL_ITERATIONS,
                           seed=seed) if gl_curve else None

    report = {
        "checkpoint": shown_path(checkpoint), "model": {"step": pipe.config.get("step"), "mel": model_mel.to_dict(),
                                                 "text_encoder": pipe.config.get("text_encoder")},
        "settings": {"n": n, "seed": seed, "steps": steps, "sampler": sampler, "guidance_scale": guidance_scale,
                     "diversity": diversity, "griffin_lim_iters": griffin_lim_iters, "heldout_seed": heldout_seed,
                     "seconds": seconds, "classifier": shown_path(classifier_dir), "train_data": shown_path(train_data),
                     "baselines": {k: shown_path(v) for k, v in (baselines or {}).items()}},
        "classifier": {"heldout_accuracy": heldout_accuracy, "used_attributes": used, "threshold": USE_THRESHOLD},
        "adherence": adherence, "chance": chance_levels(),
        "similarity": {name: {metric: summarize(v) for metric, v in scores.items()} for name, scores in similarity.items()},
        "memorisation": memorisation,
        "distance": distance,
        "griffin_lim": gl,
        "examples": [{"caption": c, "seed": s} for c, s in zip(captions[:8], seeds[:8])],
    }
    write_text_atomic(out / "report.json", json.dumps(_jsonable(report), indent=2))
    write_text_atomic(out / "report.md", render_markdown(report))
    if plots:
        write_plots(out, report, similarity, gen_mels, real_mels, captions, model_mel)
    for i in range(min(8, n)):  # a few clips to listen to
        from .audio import save_wav
        save_wav(out / "samples" / f"{i:02d}-generated.wav", gen["waves"][i], sr)
        save_wav(out / "samples" / f"{i:02d}-real.wav", real_waves[i], sr)
    timing = {"wall_s": round(time.time() - started, 1)}
    write_text_atomic(out / "timing.json", json.dumps(timing))  # kept apart: report.json is deterministic
    return report


def headline(report: dict[str, Any], name: str = "generated") -> dict[str, float]:
    """The numbers a comparison table needs from one report (``name``: which sample set).

    ``adherence``: mean classifier accuracy over the used attributes; ``fd_embed``/``kid_embed``: in the
    classifier's embedding space; ``fd_feat``/``kid_feat``: hand-crafted features; ``*_floor``: real vs real.
    """
    nothing = {"fd": None, "fd_real_vs_real": None, "kid": None}  # "real" is the reference, not compared
    emb = report["distance"]["classifier embedding"].get(name, nothing)
    feat = report["distance"]["hand-crafted features"].get(name, nothing)
    return {"adherence": report["adherence"][name]["mean over used attributes"],
            **{a: report["adherence"][name][a] for a in report["classifier"]["used_attributes"]},
            "tempo (librosa)": report["adherence"][name]["tempo (librosa)"],
            "drums (percussive energy)": report["adherence"][name]["drums (percussive energy)"],
            "fd_embed": emb["fd"], "fd_embed_floor": emb["fd_real_vs_real"], "kid_embed": emb["kid"],
            "fd_feat": feat["fd"], "fd_feat_floor": feat["fd_real_vs_real"], "kid_feat": feat["kid"]}


def shown_path(path: str | Path | None) -> str | None:
    """``path`` relative to the working directory when it lies inside it (reports then move with the repo)."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


# -- writing it down ------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the tables a reader wants, in the order of the module docstring."""
    s = report["settings"]
    lines = [f"# Evaluation of `{report['checkpoint']}`", "",
             f"{s['n']} held-out captions of the built-in dataset (seed {s['heldout_seed']}), {s['seconds']:.2f} s clips; "
             f"{s['sampler']} with {s['steps']} steps, guidance {s['guidance_scale']}, seed {s['seed']}; "
             f"Griffin-Lim {s['griffin_lim_iters']} iterations. Scored with the classifier in `{s['classifier']}`.", ""]
    used = report["classifier"]["used_attributes"]
    sets = list(report["adherence"])
    lines += ["## Does the music follow the caption?", "",
              f"Accuracy of the attribute classifier against what each caption states. Attributes it gets right "
              f"less than {report['classifier']['threshold']:.0%} of the time on real renders are shown but not "
              "used (marked ✗). The last two rows are the analytic detectors.", "",
              "| attribute | classifier on real (held-out) | " + " | ".join(sets) + " | chance |",
              "|---|---:|" + "---:|" * len(sets) + "---:|"]
    for attribute in report["adherence"]["generated"]:
        held = report["classifier"]["heldout_accuracy"].get(attribute)
        mark = "" if attribute in used or held is None else " ✗"
        chance = report["chance"].get(attribute)
        lines.append(f"| {attribute}{mark} | {_pct(held)} | " +
                     " | ".join(_pct(report["adherence"][name][attribute]) for name in sets) + f" | {_pct(chance)} |")
    lines += ["", "## Spectrogram similarity (the report's SSIM and MSE, as distributions)", "",
              "| pair | n | SSIM median [q25, q75] | MSE median [q25, q75] |", "|---|---:|---|---|"]
    for name, scores in report["similarity"].items():
        a, b = scores["ssim"], scores["mse"]
        lines.append(f"| {name} | {a['n']} | {a['median']:.3f} [{a['q25']:.3f}, {a['q75']:.3f}] | "
                     f"{b['median']:.4f} [{b['q25']:.4f}, {b['q75']:.4f}] |")
    if report["memorisation"]:
        m = report["memorisation"]
        lines += ["", f"Memorisation: {_pct(m['closer_than_any_real'])} of samples are closer to a training crop than "
                  f"any held-out real clip is (closest: MSE {m['closest_mse']:.4f}, for “{m['closest_caption']}”; "
                  f"the training clip's caption: “{m['closest_training_caption']}”)."]
    lines += ["", "## How close is the generated distribution?", "",
              "Samples from the captions of half A against the real clips of half B; the floor is real half A "
              "against real half B (same sizes, so the same bias). Features are z-scored with real half B's "
              "statistics; KID is the mean ± std over random subsets of half the set.", "",
              "| space | set | FD | FD floor (real vs real) | KID ×100 | KID floor ×100 |", "|---|---|---:|---:|---:|---:|"]
    for space, rows in report["distance"].items():
        for name, d in rows.items():
            lines.append(f"| {space} | {name} | {d['fd']:.2f} | {d['fd_real_vs_real']:.2f} | "
                         f"{100 * d['kid']:.2f} ± {100 * d['kid_std']:.2f} | {100 * d['kid_real_vs_real']:.2f} |")
    if report["griffin_lim"]:
        lines += ["", "## Griffin-Lim on real clips", "",
                  "From the mel (what generation does) and, for comparison, from the true STFT magnitude "
                  "(the phase loss alone). Scored against the original clip's STFT magnitude.", "",
                  "| iterations | SC from mel | LSD from mel (dB) | SC from true magnitude | LSD from true magnitude (dB) |",
                  "|---:|---:|---:|---:|---:|"]
        for k, v in report["griffin_lim"].items():
            lines.append(f"| {k} | {v['sc']:.4f} | {v['lsd']:.2f} | {v.get('oracle_sc', float('nan')):.4f} | "
                         f"{v.get('oracle_lsd', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def write_plots(out: Path, report: dict, similarity: dict, gen_mels, real_mels, captions, mel_config) -> None:
    """``adherence.png``, ``similarity.png``, ``griffin_lim.png`` and ``examples.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .viz import plot_mel

    attributes = list(report["adherence"]["generated"])
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / (len(report["adherence"]) + 1)
    for k, (name, accs) in enumerate(report["adherence"].items()):
        ax.bar(np.arange(len(attributes)) + k * width, [accs[a] for a in attributes], width, label=name)
    ax.bar(np.arange(len(attributes)) + len(report["adherence"]) * width,
           [report["chance"].get(a, np.nan) for a in attributes], width, label="chance", color="lightgrey")
    ax.set_xticks(np.arange(len(attributes)) + 0.4 - width / 2, attributes, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("Does the music follow the caption? (classifier, and analytic detectors on the right)")
    fig.tight_layout()
    fig.savefig(out / "adherence.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, scores in similarity.items():
        axes[0].hist(scores["ssim"], bins=20, alpha=0.5, label=name)
        axes[1].hist(scores["mse"], bins=20, alpha=0.5, label=name)
    axes[0].set_xlabel("SSIM")
    axes[1].set_xlabel("MSE ([-1, 1] units)")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "similarity.png", dpi=110)
    plt.close(fig)

    if report["griffin_lim"]:
        its = [int(k) for k in report["griffin_lim"]]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3))
        for key, label in (("", "from the mel"), ("oracle_", "from the true magnitude")):
            if key + "sc" in next(iter(report["griffin_lim"].values())):
                axes[0].semilogx(its, [v[key + "sc"] for v in report["griffin_lim"].values()], "o-", label=label)
                axes[1].semilogx(its, [v[key + "lsd"] for v in report["griffin_lim"].values()], "o-", label=label)
        axes[0].legend(fontsize=7)
        axes[0].set_ylabel("spectral convergence")
        axes[1].set_ylabel("log-spectral distance (dB)")
        for ax in axes:
            ax.set_xlabel("Griffin-Lim iterations")
        fig.tight_layout()
        fig.savefig(out / "griffin_lim.png", dpi=110)
        plt.close(fig)

    k = min(4, len(captions))
    fig, axes = plt.subplots(2, k, figsize=(3 * k, 4.4), squeeze=False)
    for i in range(k):
        plot_mel(real_mels[i, 0], mel_config, ax=axes[0, i], title="real: " + captions[i][:40] + "…", colorbar=False)
        plot_mel(gen_mels[i, 0], mel_config, ax=axes[1, i], title="generated, same caption", colorbar=False)
    for ax in axes.flat:
        ax.title.set_fontsize(7)
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=100)
    plt.close(fig)
