"""Mutation check: plant realistic bugs one at a time and see whether the fast tests catch them.

Each mutant replaces one exact snippet of one library file (the snippet must occur exactly once,
so a mutant that no longer applies is reported as stale rather than silently skipped), in a
scratch copy of the repository, and runs the tests named for it. A mutant is *killed* when those
tests fail, *survived* when they pass. Every listed mutant must be killed.

Not part of CI (it runs the named tests once per mutant). Run it whenever a change touches the
modules below, and record the score:

    python tools/mutants.py                 # every mutant
    python tools/mutants.py -k losses       # mutants whose name contains "losses"
    python tools/mutants.py --list          # names, files and tests only
    python tools/mutants.py --baseline      # also check that the unmutated tests pass
    python tools/mutants.py --extra more.py # also the MUTANTS list defined in another file
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # path relative to the repository root
    old: str  # exact snippet, found exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids or files that must fail
    why: str = ""


M = Mutant
MUTANTS: list[Mutant] = [
    # --- timestep selection (analysis) --------------------------------------------------------
    M(
        "analysis: per-cluster argmin instead of the optimal assignment",
        "diffsketch/analysis/timesteps.py",
        "    clusters, chosen = linear_sum_assignment(cost)\n",
        "    clusters, chosen = np.arange(len(centers)), cost.argmin(axis=1)\n",
        ("tests/test_analysis.py",),
        "greedy choice can pick one timestep for two clusters",
    ),
    M(
        "analysis: the timestep of the point nearest each centre",
        "diffsketch/analysis/timesteps.py",
        "    clusters, chosen = linear_sum_assignment(cost)\n",
        "    near = np.linalg.norm(projection[:, None, :] - centers[None], axis=2).argmin(axis=0)\n"
        "    clusters, chosen = np.arange(len(centers)), row_step[near]\n",
        ("tests/test_analysis.py",),
    ),
    M(
        "analysis: the assignment maximises the cost",
        "diffsketch/analysis/timesteps.py",
        "    clusters, chosen = linear_sum_assignment(cost)\n",
        "    clusters, chosen = linear_sum_assignment(cost, maximize=True)\n",
        ("tests/test_analysis.py",),
    ),
    M(
        "analysis: cost is the distance to the nearest point, not the mean",
        "diffsketch/analysis/timesteps.py",
        "axis=2).mean(axis=0)\n",
        "axis=2).min(axis=0)\n",
        ("tests/test_analysis.py",),
    ),
    # --- the streamed PCA ---------------------------------------------------------------------------
    M(
        "pca: layers scaled by 1/variance instead of 1/sqrt(variance)",
        "diffsketch/analysis/pca.py",
        "return 1.0 / total_variance**0.5 if equal_weights",
        "return 1.0 / total_variance if equal_weights",
        ("tests/test_pca.py",),
    ),
    M(
        "pca: the layer means not folded into Y^T X_w",
        "diffsketch/analysis/pca.py",
        "s * (al - torch.outer(y_sum, m))",
        "s * al",
        ("tests/test_pca.py",),
    ),
    M(
        "pca: the first block not centred after pass 0",
        "diffsketch/analysis/pca.py",
        "return y - y.sum(0) / rows, a  # centred",
        "return y, a  # centred",
        ("tests/test_pca.py",),
    ),
    M(
        "pca: Rayleigh-Ritz on the last block only (plain subspace iteration)",
        "diffsketch/analysis/pca.py",
        "        kb = torch.cat(products, dim=0)\n        q, c = _orth(torch.cat(basis, dim=1))\n",
        "        kb = products[-1]\n        q, c = _orth(basis[-1])\n",
        ("tests/test_pca.py",),
    ),
    M(
        "pca: the projection without the singular values",
        "diffsketch/analysis/pca.py",
        "projection = q @ (u * sv)",
        "projection = q @ u",
        ("tests/test_pca.py",),
    ),
    M(
        "pca: the total variance of the unweighted layers",
        "diffsketch/analysis/pca.py",
        "total = sum(s * s * v for s, v in zip(scales, variances))",
        "total = sum(v for s, v in zip(scales, variances))",
        ("tests/test_pca.py",),
    ),
    # --- sampling and models ----------------------------------------------------------------------
    M(
        "models: the loaded scheduler config's clip_sample / set_alpha_to_one are kept",
        "diffsketch/diffusion/models.py",
        "    return DDIMScheduler.from_config(config, **DDIM_FIXED)\n",
        "    return DDIMScheduler.from_config(config)\n",
        ("tests/test_models.py",),
    ),
    M(
        "sampling: the final latent is decoded whatever sample.decode says",
        "diffsketch/diffusion/sampling.py",
        'decoded = last["pred_x0"] if decode == "pred_x0" else latents',
        "decoded = latents",
        ("tests/test_sampling.py",),
    ),
    M(
        "sampling: CFG halves read in the wrong order",
        "diffsketch/diffusion/sampling.py",
        "            noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)\n"
        "            noise_pred = noise_pred_uncond + guidance * (noise_pred_cond - noise_pred_uncond)\n"
        "        variance_noise",
        "            noise_pred_cond, noise_pred_uncond = noise_pred.chunk(2)\n"
        "            noise_pred = noise_pred_uncond + guidance * (noise_pred_cond - noise_pred_uncond)\n"
        "        variance_noise",
        ("tests/test_sampling.py",),
    ),
    M(
        "features: the cond and uncond halves swapped",
        "diffsketch/diffusion/features.py",
        'HALVES = {"uncond": (0,), "cond": (1,),',
        'HALVES = {"uncond": (1,), "cond": (0,),',
        ("tests/test_sampling.py", "tests/test_generator.py"),
    ),
    # --- training: CDST, prior, generator ---------------------------------------------------------
    M(
        "cdst: the example and random weights swapped",
        "diffsketch/training/cdst.py",
        "    return w * example.to(random.dtype) + (1 - w) * random\n",
        "    return (1 - w) * example.to(random.dtype) + w * random\n",
        ("tests/test_cdst.py",),
    ),
    M(
        "prior: components scaled by the variance instead of the standard deviation",
        "diffsketch/training/prior.py",
        "* self.variances.sqrt()",
        "* self.variances",
        ("tests/test_prior.py",),
    ),
    M(
        "generator: the lower aggregator's output dropped (the authors' bug)",
        "diffsketch/training/generator.py",
        "torch.cat([c.unsqueeze(0), t], dim=0)",
        "torch.cat([t[:1], t], dim=0)",
        ("tests/test_generator.py",),
    ),
    # --- losses -----------------------------------------------------------------------------------
    M(
        "losses: LPIPS fed [0, 1] instead of [-1, 1]",
        "diffsketch/training/losses.py",
        "to_rgb = lambda s: (s * 2 - 1).expand(-1, 3, -1, -1)",
        "to_rgb = lambda s: s.expand(-1, 3, -1, -1)",
        ("tests/test_losses.py",),
    ),
    M(
        "losses: ImageNet mean/std on the real open_clip path (the authors' bug)",
        "diffsketch/training/losses.py",
        'cfg.get("mean", CLIP_MEAN), cfg.get("std", CLIP_STD), name)',
        "(0.485, 0.456, 0.406), (0.229, 0.224, 0.225), name)",
        ("tests/test_losses.py",),
    ),
    M(
        "losses: across and within definitions swapped",
        "diffsketch/training/losses.py",
        'terms["across"] = _one_minus_cos(e_pred - e_new, self.e_sketch - self.e_image)\n'
        '            terms["within"] = _one_minus_cos(e_pred - self.e_sketch, e_new - self.e_image)',
        'terms["within"] = _one_minus_cos(e_pred - e_new, self.e_sketch - self.e_image)\n'
        '            terms["across"] = _one_minus_cos(e_pred - self.e_sketch, e_new - self.e_image)',
        ("tests/test_losses.py",),
    ),
    M(
        "losses: sign flipped inside across",
        "diffsketch/training/losses.py",
        "_one_minus_cos(e_pred - e_new, self.e_sketch - self.e_image)",
        "_one_minus_cos(e_new - e_pred, self.e_sketch - self.e_image)",
        ("tests/test_losses.py",),
    ),
    M(
        "losses: OpenAI weights in a GELU tower (open_clip only warns)",
        "diffsketch/training/losses.py",
        "force_quick_gelu=quick_gelu)",
        "force_quick_gelu=False)",
        ("tests/test_losses.py",),
    ),
    M(
        "losses: every term weighted by the L1 weight",
        "diffsketch/training/losses.py",
        "total = sum(w[name] * value for name, value in terms.items())",
        'total = sum(w["l1"] * value for name, value in terms.items())',
        ("tests/test_losses.py",),
    ),
    # --- store and sampling plan ------------------------------------------------------------------
    M(
        "store: the complete flag written before the arrays",
        "diffsketch/store/zarr_store.py",
        "            for name, value in named.items():\n                root[name][first:stop] = np.asarray(value[rows])\n"
        '            root["complete"][first:stop] = True\n',
        '            root["complete"][first:stop] = True\n'
        "            for name, value in named.items():\n                root[name][first:stop] = np.asarray(value[rows])\n",
        ("tests/test_store.py",),
    ),
    M(
        "collect: a trajectory seeded by its position in its batch",
        "diffsketch/store/collect.py",
        "                [t.seed for t in batch],\n",
        "                [cfg.seed + b for b, _ in enumerate(batch)],\n",
        ("tests/test_store.py",),
    ),
    # --- student ----------------------------------------------------------------------------------
    M(
        "student: the padded output cropped from the bottom-right",
        "diffsketch/student/network.py",
        "torch.sigmoid(self.net(x))[..., :h, :w]",
        "torch.sigmoid(self.net(x))[..., -h:, -w:]",
        ("tests/test_student.py",),
    ),
    M(
        "student: padding on the left and top",
        "diffsketch/student/network.py",
        "F.pad(x, (0, pad_w, 0, pad_h), mode=mode)",
        "F.pad(x, (pad_w, 0, pad_h, 0), mode=mode)",
        ("tests/test_student.py",),
    ),
    # --- presets ----------------------------------------------------------------------------------
    M(
        "presets: a params file with edits is replaced without --force",
        "diffsketch/core/presets.py",
        "            if not force:\n",
        "            if False:\n",
        ("tests/test_presets.py",),
    ),
    # --- ablations (diffsketch ablate), resumable stages, the extractor's auto backend -------------
    M(
        "ablation: a row counts as done whatever params it ran with",
        "diffsketch/ablation/runner.py",
        '    return "done" if ran_with == expected else "stale"\n',
        '    return "done"\n',
        ("tests/test_ablation.py::test_row_status",),
        "an edited params.yaml would keep the old experiment",
    ),
    M(
        "ablation: a failed experiment counts as done",
        "diffsketch/ablation/runner.py",
        '    if exp.state != "success" or METHOD not in',
        '    if METHOD not in',
        ("tests/test_ablation.py::test_row_status",),
    ),
    M(
        "ablation: the rows' overrides are not applied",
        "diffsketch/ablation/runner.py",
        "apply_overrides(raw, run.set_params(raw))",
        "apply_overrides(raw, [])",
        ("tests/test_ablation.py::test_every_shipped_row_changes_what_it_names",),
    ),
    M(
        "ablation report: a row is best when its interval clears the others upwards, whatever the metric's direction",
        "diffsketch/ablation/report.py",
        "(mine.low > o.high if higher else mine.high < o.low)",
        "mine.low > o.high",
        ("tests/test_ablation.py::test_a_row_is_best_only_where_its_interval_clears_the_others_and_no_lines_is_never_ranked",),
    ),
    M(
        "ablation report: the best mean is bold even where intervals overlap",
        "diffsketch/ablation/report.py",
        "        if mine.has_interval and all(o.has_interval and (mine.low > o.high if higher else mine.high < o.low) for o in others):\n",
        "        if all(mine.mean >= o.mean if higher else mine.mean <= o.mean for o in others):\n",
        ("tests/test_ablation.py::test_a_row_is_best_only_where_its_interval_clears_the_others_and_no_lines_is_never_ranked",),
        "ties and overlapping intervals were all printed bold",
    ),
    M(
        "ablation: every seed runs with params.yaml's seeds",
        "diffsketch/ablation/runner.py",
        '[f"{key}={int(base) + self.seed}"]',
        '[f"{key}={int(base)}"]',
        ("tests/test_ablation.py::test_seeds_run_each_row_with_shifted_training_seeds_and_show_fits_100_columns",),
    ),
    M(
        "ablation: finished experiments run again",
        "diffsketch/ablation/runner.py",
        '    todo = [run for run in runs if before[run.experiment] != "done"]\n',
        "    todo = list(runs)\n",
        ("tests/test_ablation.py::test_the_runner_streams_each_experiment_names_failures_and_resumes",),
    ),
    M(
        "ablation: a failed experiment goes unreported",
        "diffsketch/ablation/runner.py",
        "        if not ok:\n            failed.append(",
        "        if False:\n            failed.append(",
        ("tests/test_ablation.py::test_the_runner_streams_each_experiment_names_failures_and_resumes",),
    ),
    M(
        "ablation: the interval uses the normal quantile with few seeds",
        "diffsketch/ablation/runner.py",
        "    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / n**0.5\n",
        "    half = float(stats.norm.ppf(0.5 + confidence / 2)) * sd / n**0.5\n",
        ("tests/test_ablation.py::test_seeds_run_each_row_with_shifted_training_seeds_and_show_fits_100_columns",),
    ),
    M(
        "ablation: chamfer and F-score of sketches without lines are averaged in",
        "diffsketch/ablation/runner.py",
        "for r in seed_rows if k not in EDGE_METRICS or _has_lines(r)]",
        "for r in seed_rows]",
        ("tests/test_ablation.py::test_seeds_run_each_row_with_shifted_training_seeds_and_show_fits_100_columns",),
    ),
    M(
        "evaluation: chamfer and F-score of sketches without lines are averaged in",
        "diffsketch/evaluation/protocol.py",
        'for r in mine if k not in EDGE_METRICS or r.get("lines", 1)]',
        "for r in mine]",
        ("tests/test_evaluation.py::test_a_sketch_without_line_pixels_is_no_lines_never_averaged_in_or_ranked",),
    ),
    M(
        "evaluation: the generator's sketch is not resized back to the photo",
        "diffsketch/evaluation/protocol.py",
        'return F.interpolate(sketch, size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)',
        "return sketch[0].clamp(0, 1).flip(-1)",
        ("tests/test_evaluation.py::test_the_generator_is_scored_directly_as_the_training_example_path_sketches_a_photo",),
    ),
    M(
        "evaluation report: a tie is bold",
        "diffsketch/evaluation/report.py",
        "    return best if values.count(best) == 1 else None\n",
        "    return best\n",
        ("tests/test_evaluation.py::test_a_tie_is_not_bold",),
    ),
    M(
        "analysis report: every timeline label in one lane",
        "diffsketch/analysis/report.py",
        "        lane = next((n for n, end in enumerate(ends) if end + gap <= left), len(ends))\n",
        "        lane = 0 if ends else len(ends)\n",
        ("tests/test_report.py::test_the_timeline_labels_every_chosen_timestep_in_lanes_that_do_not_overlap",),
    ),
    M(
        "keys: settings that cannot change numbers enter the key",
        "diffsketch/core/keys.py",
        "    for name in [*NEUTRAL, *PROGRESS, *drop]:\n",
        "    for name in [*PROGRESS, *drop]:\n",
        ("tests/test_keys.py::test_settings_that_cannot_change_numbers_change_no_key_and_rerun_no_stage",),
        "a lower batch size or another checkpoint interval would start over",
    ),
    M(
        "keys: the iteration count enters the key",
        "diffsketch/core/keys.py",
        "    for name in [*NEUTRAL, *PROGRESS, *drop]:\n",
        "    for name in [*NEUTRAL, *drop]:\n",
        ("tests/test_keys.py::test_settings_that_cannot_change_numbers_change_no_key_and_rerun_no_stage",),
        "raising the iteration count would retrain from scratch",
    ),
    M(
        "checkpoints: resume from a checkpoint past the requested count",
        "diffsketch/training/checkpoint.py",
        "    found = [p for p in found if at_most is None or checkpoint_iteration(p) <= at_most]\n",
        "    found = found\n",
        ("tests/test_keys.py::test_resume_point_names_a_changed_weight_file_and_starts_afresh",),
        "a lower train.iterations would export the longer-trained weights",
    ),
    M(
        "checkpoints: a shorter run prunes the longer run's checkpoints",
        "diffsketch/training/checkpoint.py",
        "if checkpoint_iteration(p) < iteration]",
        "if p.name != path.name]",
        ("tests/test_keys.py::test_resume_point_names_a_changed_weight_file_and_starts_afresh",),
    ),
    M(
        "train: the key names the input files by path, not content",
        "diffsketch/training/trainer.py",
        "        inputs={**model_inputs, **file_inputs(files)},\n",
        "        inputs={**model_inputs, **{k: str(v) for k, v in files.items()}},\n",
        ("tests/test_keys.py::test_input_files_enter_by_content_not_by_path",),
    ),
    M(
        "models: a local model folder enters the key by its path",
        "diffsketch/diffusion/models.py",
        '        inputs = _folder_files(path, "model")\n',
        '        inputs = {"model": str(path.resolve())}\n',
        ("tests/test_keys.py::test_a_local_model_folder_is_keyed_by_its_files",),
        "new weights in the same folder would resume work made with the old ones",
    ),
    M(
        "stores: a store kept for other settings is never taken back",
        "diffsketch/store/kept.py",
        "    if not kept.is_dir() or Path(out).exists():\n",
        "    if True:\n",
        ("tests/test_store.py::test_changed_settings_keep_the_store_under_its_key",),
    ),
    M(
        "distill: a run resumed at its end reports the checkpoint's older held-out score",
        "diffsketch/student/distill.py",
        "    if start >= cfg.iterations:",
        "    if False:",
        ("tests/test_distill.py::test_lowering_distill_iterations_gives_a_fresh_run_of_that_length",),
    ),
    M(
        "extractor: auto never picks ONNX Runtime",
        "diffsketch/extractor/api.py",
        '    return "onnx" if cpu_fp32 and files.onnx is not None and onnxruntime_available() else "torch"\n',
        '    return "torch"\n',
        ("tests/test_api.py::test_auto_backend_rule",),
    ),
    M(
        "evaluation: the grid files are written in another order",
        "diffsketch/evaluation/protocol.py",
        "    for index, entry in enumerate(grid):\n",
        "    for index, entry in enumerate(reversed(grid)):\n",
        ("tests/test_evaluation.py::test_evaluate_scores_student_and_baselines",),
    ),
    # --- verify / repair, disk space, feature maps, the params schema ---------------------------
    M(
        "verify: repair clears no completion flag",
        "diffsketch/store/integrity.py",
        "            complete[entry] = False",
        "            pass",
        ("tests/test_verify.py",),
    ),
    M(
        "diskspace: a short disk never refuses to start",
        "diffsketch/store/diskspace.py",
        "    if need <= free + reclaimed:\n        return\n",
        "    if True:\n        return\n",
        ("tests/test_diskspace.py",),
    ),
    M(
        "feature maps: no percentile scaling of the colours",
        "diffsketch/analysis/feature_maps.py",
        "    low, high = np.percentile(scores, PERCENTILES, axis=0)",
        "    low, high = np.zeros(scores.shape[1]), np.ones(scores.shape[1])",
        ("tests/test_feature_maps.py",),
    ),
    M(
        "config: YAML booleans taken for numbers again",
        "diffsketch/core/params.py",
        "        if isinstance(value, bool) and _numeric_only(cls.model_fields[info.field_name].annotation):",
        "        if False:",
        ("tests/test_config.py",),
    ),
    # --- the package's shape: public tables, one error base, stage commands -------------------
    M(
        "lazy: a public name resolves to its module instead of the name",
        "diffsketch/core/lazy.py",
        'return getattr(importlib.import_module(f"{package}.{owner[name]}"), name)',
        'return importlib.import_module(f"{package}.{owner[name]}")',
        ("tests/test_layout.py",),
    ),
    M(
        "cli: only ValueError-based expected errors print one line (RuntimeError ones get a traceback)",
        "diffsketch/cli/common.py",
        "    except DiffsketchError as err:\n",
        "    except ValueError as err:\n",
        ("tests/test_cli.py", "tests/test_export.py", "tests/test_ablation.py::test_the_repository_is_checked"),
    ),
    M(
        "style folders: the evaluation passed in never reaches the model card",
        "diffsketch/extractor/style_folder.py",
        '    evaluation = evaluation or "Not evaluated."\n',
        '    evaluation = "Not evaluated."\n',
        ("tests/test_api.py::test_export_style_folder_loads_everywhere",),
    ),
    M(
        "run_stage: the stage runs without the logging callback",
        "diffsketch/cli/common.py",
        "    app.callback()(setup_logging)\n    app.command(args[0])(command)\n",
        "    app.command(args[0])(command)\n",
        ("tests/test_layout.py",),
    ),
]


# --- train.vae_fusion: off reads nothing from the VAE decoder; analyze: selection distance -----------
MUTANTS += [
    M(
        "vae-off: the decoded image leaks into the head",
        "diffsketch/training/generator.py",
        "        if not self.use_vae:\n            return self.head(x)\n",
        "        if not self.use_vae:\n            return self.head(x + rgb.mean(1, keepdim=True))\n",
        ("tests/test_ablation_switches.py",),
        "the paper's w/o-VAE row must not see the VAE decoder's output",
    ),
    M(
        "vae-off: the head still counts the three RGB channels",
        "diffsketch/training/generator.py",
        "(reduced[-1] + 3 if self.use_vae else 0)",
        "(reduced[-1] + 3 if self.use_vae else 3)",
        ("tests/test_ablation_switches.py", "tests/test_generator.py"),
    ),
    M(
        "selection-distance: mean over the selected timesteps instead of the nearest",
        "diffsketch/analysis/timesteps.py",
        "distances[:, :, selected].min(axis=2).mean()",
        "distances[:, :, selected].mean(axis=2).mean()",
        ("tests/test_analysis.py",),
    ),
    M(
        "selection-distance: squared distances",
        "diffsketch/analysis/timesteps.py",
        "np.linalg.norm(f[:, :, None, :] - f[:, None, :, :], axis=3)",
        "((f[:, :, None, :] - f[:, None, :, :]) ** 2).sum(axis=3)",
        ("tests/test_analysis.py",),
    ),
    M(
        "selection-distance: uniform leaves out the last timestep",
        "diffsketch/analysis/timesteps.py",
        "np.linspace(0, steps - 1, k)",
        "np.linspace(0, steps, k, endpoint=False)",
        ("tests/test_analysis.py",),
    ),
    M(
        "selection-distance: random always sampled, never every subset",
        "diffsketch/analysis/timesteps.py",
        "    if math.comb(steps, k) <= draws:\n",
        "    if False:\n",
        ("tests/test_analysis.py",),
    ),
    M(
        "selection-distance: random drawn with replacement",
        "diffsketch/analysis/timesteps.py",
        "rng.choice(steps, size=k, replace=False))",
        "rng.choice(steps, size=k, replace=True))",
        ("tests/test_analysis.py",),
    ),
    M(
        "selection-distance: sample std over all subsets",
        "diffsketch/analysis/timesteps.py",
        "        std = float(values.std())\n",
        "        std = float(values.std(ddof=1))\n",
        ("tests/test_analysis.py",),
    ),
    M(
        "selection-distance: the representative row is the uniform selection",
        "diffsketch/analysis/timesteps.py",
        "        representative, _ = select_timesteps(projection, row_step, cs, steps)\n",
        "        representative = uniform_timesteps(steps, len(cs))\n",
        ("tests/test_analysis.py",),
    ),
    M(
        "selection-distance: the chosen k's row is taken from the wrong k",
        "diffsketch/analysis/timesteps.py",
        "    return (curve[at_k[0]] if len(at_k) else",
        "    return (curve[at_k[0] - 1] if len(at_k) else",
        ("tests/test_analysis.py",),
    ),
    M(
        "selection-distance: the report's random row shows the std as the mean",
        "diffsketch/analysis/report.py",
        "         f\"{d['random']:.4f}\", f\"{d['random_std']:.4f}\"],",
        "         f\"{d['random_std']:.4f}\", f\"{d['random']:.4f}\"],",
        ("tests/test_report.py",),
    ),
]


# --- the extractor's first hour: download names, one style folder, EXIF, empty SVGs, quiet CLIP --------
MUTANTS += [
    M(
        "web: Content-Disposition carries the raw name only (no filename*)",
        "diffsketch/extractor/web.py",
        "    return f\"attachment; filename=\\\"{fallback}\\\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}\"\n",
        "    return f'attachment; filename=\"{filename}\"'\n",
        ("tests/test_web_server.py",),
        "a name in another script is a UnicodeEncodeError (HTTP 500)",
    ),
    M(
        "web: the ASCII fallback keeps quotes, backslashes and semicolons",
        "diffsketch/extractor/web.py",
        "    ascii_name = re.sub(r'[^\\x20-\\x7e]|[\"\\\\;]', \"_\", decomposed)\n",
        "    ascii_name = re.sub(r'[^\\x20-\\x7e]', \"_\", decomposed)\n",
        ("tests/test_web_server.py::test_content_disposition_by_hand",),
    ),
    M(
        "web: the ASCII fallback drops accented letters instead of their accents",
        "diffsketch/extractor/web.py",
        'unicodedata.normalize("NFKD", filename)',
        "filename",
        ("tests/test_web_server.py::test_content_disposition_by_hand",),
    ),
    M(
        "web: the PNG download keeps the latin-1-only header",
        "diffsketch/extractor/web.py",
        'content_disposition(f"{stem}_sketch.png")',
        "f'attachment; filename=\"{stem}_sketch.png\"'",
        ("tests/test_web_server.py::test_downloads_carry_any_file_name",),
    ),
    M(
        "web: download names keep only \\w characters (emoji dropped)",
        "diffsketch/extractor/web.py",
        "    stem = re.sub(r'[\\x00-\\x1f\\x7f/\\\\:*?\"<>|]+', \"_\", stem)[:100].strip(\" ._\")\n",
        "    stem = re.sub(r\"[^\\w.-]+\", \"_\", stem)[:100].strip(\"._\")\n",
        ("tests/test_web_server.py::test_downloads_carry_any_file_name",),
    ),
    M(
        "web: a style folder given as --styles is not served",
        "diffsketch/extractor/web.py",
        "        if _is_style(self.styles_dir):\n",
        "        if False:\n",
        ("tests/test_web_server.py::test_styles_may_name_one_style_folder",),
    ),
    M(
        "web: an upload's EXIF orientation is not applied",
        "diffsketch/extractor/web.py",
        "        image = ImageOps.exif_transpose(image)  # upright, as the browser shows the photo\n",
        "",
        ("tests/test_web_server.py::test_an_upload_is_sketched_upright",),
    ),
    M(
        "page: a sketch that cannot load is shown as a broken image",
        "diffsketch/extractor/static/app.js",
        "  sketchBox.appendChild(loaded ? img :",
        "  sketchBox.appendChild(true ? img :",
        ("tests/test_web.py::test_a_sketch_that_cannot_load_says_so",),
    ),
    M(
        "images: pil_to_tensor applies the EXIF orientation to every PIL image",
        "diffsketch/core/images.py",
        "ImageOps.exif_transpose(image) if orient else image",
        "ImageOps.exif_transpose(image)",
        ("tests/test_api.py::test_exif_orientation_applies_to_files_and_bytes_only",),
        "a PIL image the caller rotated is rotated a second time",
    ),
    M(
        "api: bytes are decoded without their EXIF orientation",
        "diffsketch/extractor/api.py",
        "pil_to_tensor(opened, orient=True)",
        "pil_to_tensor(opened)",
        ("tests/test_api.py::test_exif_orientation_applies_to_files_and_bytes_only",),
    ),
    M(
        "README: the example sketches a PIL photo as stored, sideways for a phone photo",
        "README.md",
        'photo = ImageOps.exif_transpose(Image.open("data/example/cat.png"))',
        'photo = Image.open("data/example/cat.png")',
        ("tests/test_api.py::test_the_readme_example_runs",),
    ),
    M(
        "extract: SVGs with no path are not counted",
        "diffsketch/extractor/batch.py",
        '                if isinstance(output, str) and "<path" not in output:\n',
        "                if False:\n",
        ("tests/test_extract.py::test_empty_svgs_are_counted_and_named",),
    ),
    M(
        "extract: the summary leaves out the empty SVGs",
        "diffsketch/extractor/batch.py",
        "        if self.empty:\n",
        "        if False:\n",
        ("tests/test_extract.py::test_empty_svgs_are_counted_and_named",),
    ),
    M(
        "extract: the empty-SVG warning does not name the files",
        "diffsketch/extractor/batch.py",
        " else threshold, shown, more,\n",
        ' else threshold, "", more,\n',
        ("tests/test_extract.py::test_empty_svgs_are_counted_and_named",),
    ),
    M(
        "losses: open_clip's ERROR record reaches the log",
        "diffsketch/training/losses.py",
        "        with _quiet_open_clip():\n",
        "        with contextlib.nullcontext():\n",
        ("tests/test_losses.py::test_offline_clip_fallback_says_one_warning_and_no_error",),
    ),
    M(
        "losses: open_clip's logging.error installs a stderr handler on a bare root logger",
        "diffsketch/training/losses.py",
        "    placeholder = logging.NullHandler() if not root.handlers else None\n",
        "    placeholder = None\n",
        ("tests/test_losses.py::test_offline_clip_fallback_says_one_warning_and_no_error",),
    ),
]


# --- video: the temporal mode, its figures, audio, cut-off clips, even sides ----------------------------
MUTANTS += [
    M(
        "video: the temporal mode averages moving pixels too (no gate)",
        "diffsketch/extractor/video.py",
        "        return self.step + (1.0 - self.step) * gate\n",
        "        return self.step + 0.0 * gate\n",
        ("tests/test_video.py::test_temporal_mode_halves_flicker_and_follows_motion", "tests/test_video.py::test_temporal_mode_follows_a_cut"),
        "lines would trail every motion",
    ),
    M(
        "video: flicker measured over the changed pixels instead of the still ones",
        "diffsketch/extractor/video.py",
        "        still = spread(changed, FIGURE_REACH) == 0\n",
        "        still = changed\n",
        ("tests/test_video.py::test_temporal_mode_halves_flicker_and_follows_motion",),
    ),
    M(
        "video: the audio packets are not copied",
        "diffsketch/extractor/video.py",
        "                packet.stream = audio_out\n                output.mux(packet)\n",
        "                packet.stream = audio_out\n",
        ("tests/test_video.py::test_cli_keeps_frames_rate_and_audio_and_writes_the_figures",),
    ),
    M(
        "video: a cut-off clip loses the frames its decoder still holds",
        "diffsketch/extractor/video.py",
        "                take(in_video.codec_context.decode(None))\n",
        "                take([])\n",
        ("tests/test_video.py::test_a_cut_off_clip_keeps_the_frames_that_decode",),
    ),
    M(
        "video: odd sides passed to H.264",
        "diffsketch/extractor/video.py",
        "    if even:\n",
        "    if False:\n",
        ("tests/test_video.py::test_size_caps_the_long_side_to_even_sides",),
    ),
]


# --- the GPU path: out-of-memory recovery, taps fixed at wrap time, one-sync non-finite check -------------
MUTANTS += [
    M(
        "oom: a failed chunk is skipped instead of redone",
        "diffsketch/core/batching.py",
        "                failed = len(chunk)  # handled outside",
        "                start += len(chunk); failed = len(chunk)  # handled outside",
        ("tests/test_oom.py::test_halving_redoes_the_failed_work_and_keeps_the_smaller_batch",),
        "items of a block that ran out of memory would never be written",
    ),
    M(
        "oom: the batch shrinks by one item instead of halving",
        "diffsketch/core/batching.py",
        "        self.batch = max(1, failed // 2)\n",
        "        self.batch = max(1, failed - 1)\n",
        ("tests/test_oom.py::test_halving_redoes_the_failed_work_and_keeps_the_smaller_batch",),
    ),
    M(
        "oom: micro-batches weight the batch terms by 1 instead of their share",
        "diffsketch/student/distill.py",
        "        (part_loss if share == 1 else part_loss * share).backward()\n",
        "        part_loss.backward()\n",
        ("tests/test_oom.py::test_distill_out_of_memory_redoes_the_step_in_micro_batches",),
    ),
    M(
        "oom: the example's loss terms counted in every micro-batch",
        "diffsketch/training/trainer.py",
        "            objective = share * (part_total - example) + (example if j == 0 else 0.0)\n",
        "            objective = share * (part_total - example) + example\n",
        ("tests/test_oom.py::test_train_out_of_memory_redoes_the_step_in_micro_batches",),
    ),
    M(
        "probe: measures allocated instead of reserved memory",
        "diffsketch/core/batching.py",
        "    return torch.cuda.max_memory_reserved(device) - before",
        "    return torch.cuda.max_memory_allocated(device) - before",
        ("tests/test_fast_paths.py::test_probe_measures_peak_reserved_memory",),
    ),
    M(
        "taps: the layers' outputs stay alive after the last capture closes",
        "diffsketch/diffusion/features.py",
        "                self._taps.clear()  # the last capture frees the layers' outputs\n",
        "                pass\n",
        ("tests/test_fast_paths.py::test_compiled_path_equals_eager_and_never_recompiles",),
    ),
    M(
        "guard: the gradient check overflows on a large finite gradient (L2 norm)",
        "diffsketch/training/checkpoint.py",
        'torch._foreach_norm(grads, ord=float("inf"))',
        "torch._foreach_norm([g * g for g in grads])",
        ("tests/test_fast_paths.py::test_nonfinite_guard_checks_loss_and_gradients_at_one_host_sync",),
    ),
    M(
        "guard: one host sync per gradient",
        "diffsketch/training/checkpoint.py",
        "        if bool(torch.isfinite(torch.stack([loss, *peaks])).all()):\n",
        "        if all(bool(torch.isfinite(x)) for x in [loss, *peaks]):\n",
        ("tests/test_fast_paths.py::test_nonfinite_guard_checks_loss_and_gradients_at_one_host_sync",),
    ),
]
MUTANTS += [
    # --- threads (core.threads, the CLI's --threads) and export --style without the onnx extra ------
    M(
        "threads: auto ignores the cgroup CPU quota",
        "diffsketch/core/threads.py",
        "    if limit is not None:\n        cores = min(cores, max(1, math.floor(limit)))\n",
        "",
        ("tests/test_threads.py::test_available_cores_is_the_affinity_capped_by_the_quota",),
    ),
    M(
        "threads: cgroup v2 reads the process's own cgroup only, not the limits above it",
        "diffsketch/core/threads.py",
        "        for candidate in [folder, *folder.parents]:\n",
        "        for candidate in [folder]:\n",
        ("tests/test_threads.py::test_cgroup_v2_quota_is_the_smallest_on_the_way_to_the_root",),
    ),
    M(
        "threads: auto ignores OMP_NUM_THREADS",
        "diffsketch/core/threads.py",
        "            return min(cores, int(from_env))\n",
        "            return cores\n",
        ("tests/test_threads.py::test_auto_follows_omp_num_threads_and_bad_settings_are_refused",),
    ),
    M(
        "threads: auto ignores the cores other processes keep busy",
        "diffsketch/core/threads.py",
        "    return cores if free < 1 else max(1, min(cores, free))\n",
        "    return cores\n",
        ("tests/test_threads.py::test_auto_leaves_the_cores_other_processes_keep_busy_unless_they_keep_all",),
        "next to one busy process on two cores, two threads took 1.8x as long as one",
    ),
    M(
        "threads: one thread on a machine whose every core is busy",
        "diffsketch/core/threads.py",
        "    return cores if free < 1 else max(1, min(cores, free))\n",
        "    return max(1, min(cores, free))\n",
        ("tests/test_threads.py::test_auto_leaves_the_cores_other_processes_keep_busy_unless_they_keep_all",),
        "on a crowded machine one thread got less CPU time than two",
    ),
    M(
        "threads: a quiet first reading of /proc/stat waits for eight more",
        "diffsketch/core/threads.py",
        "        if readings == [0]:\n            return 0\n",
        "",
        ("tests/test_threads.py::test_auto_leaves_the_cores_other_processes_keep_busy_unless_they_keep_all",),
    ),
    M(
        "threads: the reader of /proc/stat counted as a busy process",
        "diffsketch/core/threads.py",
        "        readings.append(max(0, running - 1))\n",
        "        readings.append(running)\n",
        ("tests/test_threads.py::test_auto_leaves_the_cores_other_processes_keep_busy_unless_they_keep_all",),
    ),
    M(
        "threads: the command line resolves auto twice (two looks at the busy cores, two log lines)",
        "diffsketch/cli/common.py",
        "    return apply_threads(count)\n",
        "    return apply_threads(setting)\n",
        ("tests/test_threads.py::test_a_command_reads_the_busy_cores_once_and_logs_its_count_once",),
    ),
    M(
        "threads: zero threads accepted",
        "diffsketch/core/threads.py",
        "count < 1 or str(count)",
        "count < 0 or str(count)",
        ("tests/test_threads.py::test_auto_follows_omp_num_threads_and_bad_settings_are_refused",),
    ),
    M(
        "threads: the BLAS pools keep their size",
        "diffsketch/core/threads.py",
        "    threadpool_limits(limits=count)\n",
        "",
        ("tests/test_threads.py::test_apply_threads_sizes_torch_blas_and_the_environment",),
    ),
    M(
        "threads: idle OpenMP threads keep spinning",
        "diffsketch/core/threads.py",
        'WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}',
        'WAIT_POLICY = {"KMP_BLOCKTIME": "0"}',
        ("tests/test_threads.py::test_sleep_when_idle_sets_the_wait_policy_and_keeps_what_the_user_set",),
    ),
    M(
        "cli: the params' threads win over --threads",
        "diffsketch/cli/common.py",
        '    setting = option if option is not None else params.threads if params is not None else "auto"\n',
        '    setting = params.threads if params is not None else option or "auto"\n',
        ("tests/test_threads.py::test_commands_take_threads_from_the_option_or_the_params",),
    ),
    M(
        "cli: rich help, where a flag reads as a <bool> value",
        "diffsketch/cli/common.py",
        'HELP_STYLE: dict = {"rich_markup_mode": None}',
        "HELP_STYLE: dict = {}",
        ("tests/test_cli.py::test_boolean_options_read_as_switches_in_every_help",),
    ),
    M(
        "style folder: the ONNX export is tried without the onnx extra",
        "diffsketch/extractor/style_folder.py",
        "        onnx = onnx_export_available()\n",
        "        onnx = True\n",
        ("tests/test_export.py::test_style_folder_without_the_onnx_extra",),
    ),
]

MUTANTS += [
    # --- native resolution by tiles, the megapixel cap, line controls (extractor.tiles, extractor.lines) ----
    M(
        "tiles: each tile normalised by its own statistics (the naive tiling)",
        "diffsketch/extractor/tiles.py",
        "        if self.mean is None:\n            if self.gather is not None:",
        "        if True:\n            if False:",
        ("tests/test_tiles.py::test_tiles_equal_the_whole_image_pass",),
        "the seams and the whole-image statistics are the point of the module",
    ),
    M(
        "tiles: halo one stride short of the receptive radius",
        "diffsketch/extractor/tiles.py",
        "    return math.ceil(receptive_radius(downsamples, blocks) / multiple) * multiple\n",
        "    return math.ceil(receptive_radius(downsamples, blocks) / multiple) * multiple - 4 * multiple\n",
        ("tests/test_tiles.py::test_tiles_equal_the_whole_image_pass",),
        "a margin narrower than the receptive field changes pixels near tile edges",
    ),
    M(
        "tiles: unbiased variance",
        "diffsketch/extractor/tiles.py",
        "        var = (sums.squares / sums.count - mean * mean).clamp_min(0.0)\n",
        "        var = (sums.squares / sums.count - mean * mean).clamp_min(0.0) * sums.count / max(1, sums.count - 1) * 1.05\n",
        ("tests/test_tiles.py::test_tiles_equal_the_whole_image_pass",),
        "instance norm divides by the biased standard deviation",
    ),
    M(
        "api: the megapixel cap not checked for files",
        "diffsketch/extractor/batch.py",
        "        check_megapixels(height, width, max_megapixels, str(source))\n",
        "",
        ("tests/test_tiles.py::test_the_megapixel_cap_refuses_from_the_header",),
    ),
    M(
        "lines: specks kept at any size",
        "diffsketch/extractor/lines.py",
        "    small = np.bincount(labels.ravel()) < area\n",
        "    small = np.bincount(labels.ravel()) < 0\n",
        ("tests/test_lines.py::test_specks_below_the_area_vanish_and_larger_ones_stay",),
    ),
    M(
        "lines: hysteresis as a single cut at the high threshold",
        "diffsketch/extractor/lines.py",
        "        ink = apply_hysteresis_threshold(1.0 - values, 1.0 - high, 1.0 - low)\n",
        "        ink = (1.0 - values) > 1.0 - high\n",
        ("tests/test_lines.py::test_hysteresis_keeps_weak_lines_touching_strong_ones",),
    ),
    M(
        "lines: line width ignored",
        "diffsketch/extractor/lines.py",
        "    if width == 1.0:\n        return values\n",
        "    if True:\n        return values\n",
        ("tests/test_lines.py::test_stroke_width_grows_with_line_width",),
    ),
    M(
        "lines: transparent paper keeps black ink whatever the colour",
        "diffsketch/extractor/lines.py",
        "        rgba[..., :3] = ink.astype(np.uint8)\n",
        "        rgba[..., :3] = 0\n",
        ("tests/test_lines.py::test_colours_and_transparent_paper",),
    ),
]


MUTANTS += [
    # --- damaged stores never read silently, the projection on disk, finite features (store) ----------
    M(
        "store.read: absent chunk files read as the fill value",
        "diffsketch/store/zarr_store.py",
        "    missing = _absent(array, selection)\n",
        "    missing = None\n",
        ("tests/test_verify.py::test_analyze_refuses_a_deleted_unet_chunk_file",),
        "zarr returns zeros for an absent chunk: analyze would finish on them",
    ),
    M(
        "repair: the damaged entries' chunk files kept",
        "diffsketch/store/integrity.py",
        "                    sync(array.store.delete(key))\n",
        "                    pass\n",
        ("tests/test_verify.py::test_repair_removes_a_damaged_shard_so_that_sample_rewrites_it",),
        "the rerun's shard write reads the damaged shard first",
    ),
    M(
        "verify: metadata documents not checked",
        "diffsketch/store/integrity.py",
        "    meta, _, docs = _metadata(loc)\n",
        "    meta, docs = [], {}\n",
        ("tests/test_verify.py::test_truncated_metadata_is_found_named_and_rebuilt",),
        "a cut zarr.json passes verify and breaks every later consolidation",
    ),
    M(
        "projection: the entries' folders not counted",
        "diffsketch/store/diskspace.py",
        "    entry_allocated = per_entry + entry_folders * fs.folder\n",
        "    entry_allocated = per_entry\n",
        ("tests/test_diskspace.py::test_projection_counts_blocks_and_folders",),
        "each trajectory's nested chunk folders cost a block each on ext4",
    ),
    M(
        "sample: non-finite rows written",
        "diffsketch/store/collect.py",
        '    bad = store.nonfinite(named | {"noise": noise, "latents": latents})\n',
        "    bad = {}\n",
        ("tests/test_store.py::test_an_infinite_activation_is_never_written_and_is_sampled_again",),
        "an infinite feature would be stored without a word",
    ),
    M(
        "features: rows beyond float16 not scaled",
        "diffsketch/diffusion/features.py",
        "                x = torch.ldexp(x, -e.to(x.dtype).view(-1, *[1] * (x.dim() - 1)))\n",
        "                pass\n",
        ("tests/test_store.py::test_an_activation_beyond_float16_is_stored_finite_with_its_exponent",),
        "a feature above 65,504 becomes inf in the store",
    ),
    M(
        "features: the exponent rounded down (still overflows)",
        "diffsketch/diffusion/features.py",
        "    e = torch.ceil(torch.log2(amax / FLOAT16_MAX)).clamp(0, 126)\n",
        "    e = torch.floor(torch.log2(amax / FLOAT16_MAX)).clamp(0, 126)\n",
        ("tests/test_store.py::test_overflow_exponent_is_the_smallest_power_of_two_that_fits_float16",),
    ),
    M(
        "features: non-finite rows given an exponent",
        "diffsketch/diffusion/features.py",
        "    return torch.where(torch.isfinite(amax), e, torch.zeros_like(e)).to(torch.int8)\n",
        "    return torch.nan_to_num(e, posinf=126.0).to(torch.int8)\n",
        ("tests/test_store.py::test_overflow_exponent_is_the_smallest_power_of_two_that_fits_float16",),
    ),
    M(
        "read_features: the exponent not multiplied back",
        "diffsketch/store/zarr_store.py",
        "    return np.ldexp(np.asarray(x, dtype=np.float32), e.reshape(",
        "    return x + 0 * np.ldexp(np.asarray(x, dtype=np.float32), e.reshape(",
        ("tests/test_store.py::test_an_activation_beyond_float16_is_stored_finite_with_its_exponent",),
    ),
    M(
        "read_features: the first layer's exponent for every layer",
        "diffsketch/store/zarr_store.py",
        '    return scale_back(x, read(exponents, (*sel, exponents.attrs["layers"].index(name))))\n',
        "    return scale_back(x, read(exponents, (*sel, 0)))\n",
        ("tests/test_store.py::test_an_activation_beyond_float16_is_stored_finite_with_its_exponent",),
    ),
    M(
        "sample: the exponents not written",
        "diffsketch/store/collect.py",
        "            [items[r].index for r in good], rows(unet), rows(vae), images[good], noise[good], latents[good], rows(exponents)\n",
        "            [items[r].index for r in good], rows(unet), rows(vae), images[good], noise[good], latents[good]\n",
        ("tests/test_store.py::test_an_activation_beyond_float16_is_stored_finite_with_its_exponent",),
    ),
    M(
        "analysis: features read without their exponents",
        "diffsketch/analysis/timesteps.py",
        "            x = store.scale_back(x, exponents[:, self.layers.index(name)])\n",
        "            pass\n",
        ("tests/test_analysis.py::test_analysis_reads_features_with_their_exponents",),
    ),
    M(
        "open_dataset: features as stored, exponents ignored",
        "diffsketch/store/xarray_view.py",
        "        ds = _scaled_back(ds, root[store.exponent_array(group)], done)\n",
        "        pass\n",
        ("tests/test_xarray_view.py::test_features_stored_with_an_exponent_come_back_as_sampled",),
    ),
    M(
        "open_dataset: the exponents of every trajectory, not the completed ones",
        "diffsketch/store/xarray_view.py",
        "    e = np.asarray(store.read(exponents))[done]",
        "    e = np.asarray(store.read(exponents))[: len(done)]",
        ("tests/test_xarray_view.py",),
    ),
    M(
        "ablate --show: the rows not in the report listed on one line",
        "diffsketch/cli/ablate.py",
        '            typer.echo(textwrap.fill(text, width=100, subsequent_indent="  ", break_on_hyphens=False))\n',
        "            typer.echo(text)\n",
        ("tests/test_ablation.py::test_seeds_run_each_row_with_shifted_training_seeds_and_show_fits_100_columns",),
    ),
    M(
        "ablate --show: notes cut at the width",
        "diffsketch/ablation/report.py",
        '    notes = [wrapped for note in notes for wrapped in textwrap.wrap(note, width, subsequent_indent="  ", break_on_hyphens=False)]\n',
        "    notes = [note[: width - 30] for note in notes]\n",
        ("tests/test_ablation.py::test_seeds_run_each_row_with_shifted_training_seeds_and_show_fits_100_columns",),
    ),
    M(
        "analysis: absent files checked on every pass",
        "diffsketch/analysis/timesteps.py",
        "check_files=(name, index) not in self.present)",
        "check_files=True)",
        ("tests/test_analysis.py::test_analysis_checks_each_trajectorys_files_once_over_its_passes",),
    ),
    M(
        "analysis: absent files never checked",
        "diffsketch/analysis/timesteps.py",
        "check_files=(name, index) not in self.present)",
        "check_files=False)",
        ("tests/test_verify.py::test_analyze_refuses_a_deleted_unet_chunk_file",),
    ),
    M(
        "open_dataset: absent chunk files not checked",
        "diffsketch/store/xarray_view.py",
        "    damaged = _absent_files(_checked_arrays(root, node), done)\n",
        "    damaged = {}\n",
        ("tests/test_xarray_view.py",),
    ),
    M(
        "train: the model's weights left out of the train key",
        "diffsketch/training/trainer.py",
        "        inputs={**model_inputs, **file_inputs(files)},\n",
        "        inputs={**file_inputs(files)},\n",
        ("tests/test_keys.py::test_train_does_not_resume_checkpoints_made_with_other_model_weights",),
        "a training run would resume checkpoints made with other weights under the same model id",
    ),
    M(
        "checkpoints: other keys named when this key's only checkpoints are past the target",
        "diffsketch/training/checkpoint.py",
        "    if beyond is None and others:",
        "    if checkpoint is None and others:",
        ("tests/test_keys.py::test_resume_point_names_a_changed_weight_file_and_starts_afresh",),
        "lowering iterations warned that another key's input had changed",
    ),
    M(
        "sample: an empty progress bar when every trajectory is done",
        "diffsketch/store/collect.py",
        'disable=not progress or not missing)',
        'disable=not progress)',
        ("tests/test_store.py::test_changed_settings_keep_the_store_under_its_key",),
    ),
]

def _copy_repo(dst: Path) -> None:
    """The files git tracks plus untracked ones it does not ignore, as they are in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _run_tests(root: Path, tests: tuple[str, ...], timeout: int) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timeout"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, (lines[-1] if lines else proc.stderr.strip()[-200:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutants whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--baseline", action="store_true", help="first run every named test file unmutated")
    parser.add_argument("--extra", type=Path, help="a Python file defining more MUTANTS")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    args = parser.parse_args(argv)

    mutants = list(MUTANTS)
    if args.extra:
        mutants += runpy.run_path(str(args.extra), init_globals={"Mutant": Mutant, "M": Mutant})["MUTANTS"]
    mutants = [m for m in mutants if args.k.lower() in m.name.lower()]
    if args.list:
        for m in mutants:
            print(f"{m.name}\n    {m.file}  ->  {' '.join(m.tests)}")
        return 0

    stale = [m for m in mutants if (REPO / m.file).read_text().count(m.old) != 1]
    for m in stale:
        print(f"STALE     {m.name}: its snippet is not found exactly once in {m.file}")
    if stale:
        return 2

    with tempfile.TemporaryDirectory(prefix="diffsketch-mutants-") as tmp:
        root = Path(tmp)
        _copy_repo(root)
        if args.baseline:
            files = tuple(sorted({t for m in mutants for t in m.tests}))
            rc, last = _run_tests(root, files, args.timeout * 4)
            print(f"baseline  {'ok' if rc == 0 else 'FAILED'}: {last}")
            if rc != 0:
                return 2
        killed = 0
        for m in mutants:
            path = root / m.file
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new))
            start = time.perf_counter()
            try:
                rc, last = _run_tests(root, m.tests, args.timeout)
            finally:
                path.write_text(original)
            status = "killed" if rc not in (0, 5) else "SURVIVED"  # 5: no tests collected
            killed += status == "killed"
            print(f"{status:9} {m.name}  [{time.perf_counter() - start:.0f} s: {last}]", flush=True)
    print(f"\nmutation score: {killed}/{len(mutants)} killed")
    return 0 if killed == len(mutants) else 1


if __name__ == "__main__":
    sys.exit(main())
