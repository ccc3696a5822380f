"""Step `compress`: score, mask, optionally fine-tune and shrink the trained model, then
optionally run rounds of self-compression on the shrunk one (`compress.rounds`).

A unit score on a model that is not a chain deletes channels together with the
BatchNorm channels after them (`shrink_graph(prune_units=...)`), which the masked model
does not: the search then scores, and the fine-tune trains, the shrunk network, so
what is held on validation is what is written (`graph_units`, also rule "flops").

Writes compressed/model.safetensors and compressed/compression.json (+ .md), published
together. Options given as overrides are used for this compression and recorded in
compression.json (`extra.options`); config.yaml is never rewritten, so a failing
override leaves nothing behind. The trained model's metrics come from
evaluation.json when it is current (see `evaluate`), so they are not predicted twice.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from ...compress import (
    apply_masks,
    compression_report,
    global_sparsity_masks,
    layer_sparsity_masks,
    report_markdown,
    search_sparsity,
    self_compress,
    shrink,
    shrink_graph,
    threshold_masks,
    unit_scores,
    weight_masks_for,
    weight_scores,
)
from ...compress.pip_rules import select_by_pip
from ...evaluation import Scorer, scorer
from ...finetuning import finetune
from ...kl_schedule import kl_stages
from ...metrics import ece, ece_floor
from ...predict import predict
from ..config import (
    AUTO,
    COMPRESS_OOD_METRICS,
    FLOPS_RULE,
    PIP_RULE_NAMES,
    ConfigError,
    config_to_dict,
    with_overrides,
)
from ..data import RunData
from ..factory import ood_inputs
from ..folder import Run
from ..policy import (
    fit_kwargs,
    primary_mode,
    resolve_compress,
    score_level,
)
from .evaluate import evaluate_models, model_entry, ood_scores, record_entry
from .graph_units import SHRINK_ERRORS, deleted_first, deletes_units, example_batch, flops_masks

SMALL_SPLIT = 500  # fewer rows than this: an accuracy step is >= 0.2 %, a search is noisy


def _search_data(data: RunData, limit: int) -> tuple[tuple[Tensor, Tensor], dict[str, Any]]:
    """The first `limit` rows (`compress.search_rows`) the search and the rounds score, and
    a record of them (split, rows, rows available, a warning if few)."""
    split = "validation" if data.val is not None else "training"
    x, y = data.val if data.val is not None else data.train
    available = len(x)
    x, y = x[:limit], y[:limit]
    record: dict[str, Any] = {"split": split, "rows": len(x), "rows_available": available}
    if len(x) < SMALL_SPLIT:
        record["warning"] = (
            f"the search held accuracy on only {len(x)} {split} rows (one row = "
            f"{100 / max(len(x), 1):.2g} % accuracy); raise data.val_fraction or data.limit"
        )
    return (x, y), record


def _tolerances(run: Run) -> dict[str, float | str]:
    """`compress.tolerances` as the library takes them (numbers as floats)."""
    return {
        k: v if isinstance(v, str) else float(v) for k, v in run.config.compress.tolerances.items()
    }


def _held_mode(run: Run, model: nn.Module, names: tuple[str, ...]) -> str:
    """The validation predictive `compress.validation_mode` asks for: auto is the posterior mean
    (one pass, the arg-max the search has always held) when only accuracy is held,
    else the model's own predictive, whose uncertainty the test figures report."""
    c = run.config.compress
    own = primary_mode(run.config, model)
    mode = (
        c.validation_mode
        if c.validation_mode != AUTO
        else ("mean" if set(names) == {"accuracy"} else own)
    )
    if mode == "mc" and own == "mean":
        mode = "mean"  # a deterministic predictive (eVI, a plain net): one pass is all of it
    if mode == "mean" and "ood_auroc_mi" in names:
        raise ConfigError(
            "compress.tolerances.ood_auroc_mi needs Monte-Carlo predictions, and this "
            f"model's predictive is {'one pass' if own == 'mean' else 'held in mode mean'}; "
            "hold ood_auroc_entropy instead"
        )
    return mode


def _more_rows(used: dict[str, Any]) -> str:
    """How to give the search more rows: past `compress.search_rows` first, if it cut any."""
    if used.get("rows_available", 0) > used.get("rows", 0):
        return (
            f"raise compress.search_rows (the search reads {used['rows']} of the "
            f"{used['rows_available']} {used['split']} rows)"
        )
    return "raise data.val_fraction / data.limit"


def _validation_scorer(
    run: Run, model: nn.Module, names: tuple[str, ...]
) -> tuple[Scorer, tuple[Tensor, Tensor], dict[str, Any]]:
    """What the search and the rounds hold: `names` on the validation rows in the mode of
    `_held_mode`, OOD AUROC against as many images of `compress.ood`'s *training*
    split, so the OOD test images stay unread until the reported figures."""
    c = run.config
    rows, used = _search_data(run.data(), c.compress.search_rows)
    used["mode"] = mode = _held_mode(run, model, names)
    if mode == "mc":
        used["samples"] = c.compress.validation_samples
    ood = None
    if any(name in COMPRESS_OOD_METRICS for name in names):
        ood = ood_inputs(c, str(c.compress.ood), "train", len(rows[0]))
        used["ood"] = {"name": c.compress.ood, "split": "training", "rows": len(ood)}
    score = scorer(
        rows,
        run.likelihood(),
        mode=mode,
        samples=c.compress.validation_samples,
        bins=c.evaluate.bins,
        seed=c.train.seed,
        metrics=names,
        ood=ood,
    )
    return score, rows, used


def _ece_resolution(
    run: Run,
    trained: nn.Module,
    rows: tuple[Tensor, Tensor],
    used: dict[str, Any],
    held: dict[str, Any],
) -> None:
    """With ECE among the `held` metrics, warn (in `used`) when the trained model's ECE on
    the held rows is within the sampling noise of a perfectly calibrated model on as many
    rows (`metrics.ece_floor`): an ECE tolerance then holds noise, not calibration."""
    c = run.config
    if "ece" not in held:
        return
    x, y = rows
    probs = predict(
        trained,
        x,
        mode=used["mode"],
        samples=c.compress.validation_samples,
        likelihood=run.likelihood(),
        seed=c.train.seed,
    ).probs
    measured = ece(probs, y, c.evaluate.bins)
    floor = ece_floor(probs, c.evaluate.bins, seed=c.train.seed)
    used["ece_floor"] = {"trained_ece": measured, "mean": floor.mean, "upper_95": floor.upper}
    if floor.resolves(measured):
        return
    warning = (
        f"the {len(y)} {used['split']} rows cannot resolve the ECE tolerance: the trained "
        f"model's ECE on them is {measured:.4f}, and a perfectly calibrated model with the "
        f"same confidences measures {floor.mean:.4f} on as many rows (95 % below "
        f"{floor.upper:.4f}), so the ECE held is mostly sampling noise; hold nll or brier "
        f"(no bins, no floor), or {_more_rows(used)} (the noise shrinks as 1/sqrt(rows))"
    )
    used["warning"] = f"{used['warning']}; {warning}" if "warning" in used else warning


def compression_masks(
    model: nn.Module, run: Run, score: str, rule: str, progress: bool = False
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Weight masks for `model` by `score` and `rule`, and a JSON-able record of the choice."""
    c = run.config.compress
    level = score_level(score)
    if rule == FLOPS_RULE:
        data = run.data()
        (x, _), used = _search_data(data, c.search_rows)
        return flops_masks(model, x, used, data.input_shape, float(c.flops or 0))
    scores = unit_scores(model, score) if level == "unit" else weight_scores(model, score)
    info: dict[str, Any] = {"score": score, "rule": rule, "level": level}
    if rule in PIP_RULE_NAMES:
        keep = {
            name: select_by_pip(s, rule, k=c.k, alpha=c.alpha).float() for name, s in scores.items()
        }
        return weight_masks_for(model, keep, "unit"), info
    if rule == "search":
        if run.data().task != "classification":
            raise ConfigError("compress.rule 'search' needs classification data; use 'global'")
        # accuracy is always held: by `delta` unless the tolerances name it themselves
        held = {"accuracy": c.delta, **_tolerances(run)}
        evaluate, rows, used = _validation_scorer(run, model, tuple(held))
        _ece_resolution(run, model, rows, used, held)
        with tqdm(desc="search", unit="candidate", disable=not progress, leave=False) as bar:

            def counted(candidate: nn.Module) -> dict[str, float]:
                bar.update()
                return evaluate(candidate)

            if c.shrink and deletes_units(model, level):
                counted = deleted_first(counted, list(scores), run.data().input_shape)
            found = search_sparsity(model, scores, counted, level=level, tolerances=held)
        info["search"] = {**found.as_dict(), "data": used}
        if "warning" in used:
            run.log(f"compress: warning: {used['warning']}")
        return found.masks, info
    if rule == "global":
        masks = global_sparsity_masks(scores, c.sparsity)
    elif rule == "layer":
        masks = layer_sparsity_masks(scores, c.sparsity)
    else:
        masks = threshold_masks(scores, float(c.threshold))  # type: ignore[arg-type]
    return weight_masks_for(model, masks, level), info


def _shrunk(
    pruned: nn.Module, input_shape: tuple[int, ...], unit_masks: dict[str, Tensor] | None
) -> tuple[nn.Module, dict[str, Any]]:
    """The physically smaller model and a record: a chain by `shrink`, any other graph
    (residual additions, BatchNorm…) by `shrink_graph` on a two-row example batch.
    Units removed by a unit-level rule (`unit_masks`) are deleted there, their BatchNorm
    channels with them, instead of leaving BatchNorm's constant to fold."""
    if isinstance(pruned, nn.Sequential):
        result = shrink(pruned, input_shape)
        return result.model, {**result.as_dict(), "architecture": result.architecture}
    example = example_batch(pruned, input_shape)
    keep = {name: m.flatten(1).any(1) for name, m in (unit_masks or {}).items()}
    graph = shrink_graph(pruned, example, prune_units=keep or None)
    return graph.model, {"graph": True, **graph.as_dict()}


def _finetune(model: nn.Module, run: Run, progress: bool) -> None:
    """`compress.finetune_epochs` of the run's own objective, the posterior's final β."""
    c = run.config.compress
    kwargs = fit_kwargs(run.config)
    for key in ("epochs", "lr", "lr_schedule", "early_stopping", "monitor", "min_delta"):
        kwargs.pop(key)
    kwargs.pop("restore_best")
    kwargs["kl_weight"] = kl_stages(kwargs["kl_weight"]).final  # the posterior's own β
    kwargs["device"] = run.device  # where the model already is (train.device, if here)
    finetune(
        model,
        run.data().train,
        epochs=c.finetune_epochs,
        lr=c.finetune_lr,
        likelihood=run.likelihood(),
        progress=progress,
        **kwargs,
    )


def _rounds(
    model: nn.Module, trained: nn.Module, run: Run, progress: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """`compress.rounds` of `self_compress` on the shrunk model, held on validation
    accuracy (`round_tolerance` against the shrunk model) and on `compress.tolerances`
    against the `trained` model, so that search and rounds together stay within them. A
    chain is cut by kernel norm, any other graph by activation scores (read on the same
    rows), so residual channels go together."""
    c = run.config.compress
    data = run.data()
    if data.task != "classification":
        raise ConfigError(
            "compress.rounds holds accuracy, so it needs classification data; set "
            "compress.rounds: 0"
        )
    against_trained = _tolerances(run)
    held = {"accuracy": c.round_tolerance, **against_trained}
    evaluate, rows, used = _validation_scorer(run, model, tuple(held))
    _ece_resolution(run, trained, rows, used, held)
    reference = None
    if against_trained:
        values = evaluate(trained)
        reference = {name: values[name] for name in against_trained}
    if isinstance(model, nn.Sequential):
        how: dict[str, Any] = {"input_shape": data.input_shape, "score": "norm"}
    else:
        example = example_batch(model, data.input_shape)
        how = {"example_inputs": example, "score": "activation", "score_data": rows[0].split(500)}
    result = self_compress(
        model,
        evaluate,
        (lambda m: _finetune(m, run, progress)) if c.finetune_epochs else None,
        fraction=c.round_fraction,
        tolerances=held,
        reference=reference,
        max_rounds=c.rounds,
        greedy=c.greedy,
        **how,
    )
    if "warning" in used:
        run.log(f"compress: warning: {used['warning']}")
    return result.model, {**result.as_dict(), "score": how["score"], "data": used}


def compress_run(
    run: Run, overrides: dict[str, Any] | None = None, *, progress: bool = False
) -> dict[str, Any]:
    """Score, mask, optionally fine-tune and shrink the trained model; write compressed/."""
    with run.locked():
        if overrides:
            run = run.with_config(with_overrides(run.config, "compress", overrides))
        return _compress(run, progress)


def _compress(run: Run, progress: bool) -> dict[str, Any]:
    c = run.config.compress
    score, rule = resolve_compress(run.config)
    model = run.load_model("trained", on_device=True)
    data = run.data()
    masks, info = compression_masks(model, run, score, rule, progress)
    info["options"] = config_to_dict(run.config)["compress"]
    pruned = apply_masks(copy.deepcopy(model), masks)
    # a graph model's deleted units go before the fine-tune, which then trains the
    # network that ships (`_deletes_units`); otherwise shrinking after it is exact
    deleting = c.shrink and deletes_units(model, info["level"])
    if c.finetune_epochs and not deleting:
        _finetune(pruned, run, progress)
    final, shrink_info = pruned, None
    if c.shrink:
        try:
            unit_masks = masks if info["level"] == "unit" else None
            final, shrink_info = _shrunk(pruned, data.input_shape, unit_masks)
        except SHRINK_ERRORS as err:
            shrink_info = {"skipped": str(err)}
            run.log(f"compress: shrink skipped ({err})")
    if c.finetune_epochs and deleting:
        _finetune(final, run, progress)
        when = "masked (the shrink was skipped)" if "skipped" in shrink_info else "after shrinking"
        shrink_info = {**shrink_info, "finetuned": when}
    info["shrink"] = shrink_info
    if c.rounds and shrink_info is not None and "skipped" not in shrink_info:
        final, info["rounds"] = _rounds(final, model, run, progress)
    elif c.rounds:
        run.log("compress: rounds skipped (the model was not shrunk)")
    info["weights_removed"] = 1.0 - sum(float(m.sum()) for m in masks.values()) / max(
        1, sum(m.numel() for m in masks.values())
    )
    # test metrics of both models: the trained one's from evaluation.json when current,
    # the compressed one's recorded there after publishing, so `evaluate` and `report`
    # predict nothing again
    # with compress.ood, OOD AUROC against the other set's test images, predicted as
    # the test metrics are (the compressed model's from the same test predictive)
    test_ood = None if c.ood is None else ood_inputs(run.config, c.ood, "test", len(data.test[0]))
    before = evaluate_models(run, "trained", progress, curve=False)["trained"]
    after = model_entry(final, run, None, progress, ood=test_ood)
    mode_before, mode_after = primary_mode(run.config, model), primary_mode(run.config, final)
    info["metrics_mode"] = {"before": mode_before, "after": mode_after}
    info["metrics_split"] = {"name": "test", "rows": len(data.test[0])}
    metrics_before, metrics_after = before["modes"][mode_before], after["modes"][mode_after]
    if test_ood is not None:
        metrics_before = metrics_before | ood_scores(model, run, mode_before, test_ood)
        info["metrics_ood"] = {"name": c.ood, "split": "test", "rows": len(test_ood)}
    report = compression_report(
        model,
        final,
        input_shape=data.input_shape,
        metrics_before=metrics_before,
        metrics_after=metrics_after,
        title=f"compression of {run.folder.name}: {score} + {rule}",
        extra=info,
    )
    with run.publish("compress") as tx:
        run.save_model(final, "compressed", {"compression": info}, tx=tx)
        tx.write_json("compressed/compression.json", dict(report))
        tx.write_bytes("compressed/compression.md", report_markdown(report).encode())
    # evaluation.json keeps the test-set metrics every model has (OOD AUROC stays in
    # compression.json, beside the trained model's)
    modes = {
        mode: {k: v for k, v in values.items() if not k.startswith("ood_auroc_")}
        for mode, values in after["modes"].items()
    }
    entry = {**after, "modes": modes, "model_sha256": run.model_digest("compressed")}
    record_entry(run, "compressed", entry)
    run.log(
        f"compress: {score}/{rule}; non-zero weights {report['totals']['nonzero_before']} → "
        f"{report['totals']['nonzero_after']}; metrics {report['metrics']['after']}"
    )
    return report
