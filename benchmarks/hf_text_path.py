"""A Hugging Face BERT through the whole path, its inputs by name: convert → fit → evaluate
→ score → shrink → evaluate.

The data are generated (no download): sequences of token ids of varying length, padded,
each token with a fixed polarity; the label is drawn from a logistic of the mean polarity
of the unpadded tokens, so the task needs the attention mask and has label noise (its
best accuracy is below 1). Batches are dicts (`input_ids`, `attention_mask`, `labels`),
as a tokenizer and Hugging Face's collator give them. Per seed:

1. `bp.convert(bert, "gaussian", example_inputs=batch)`; `bp.fit` on a DataLoader of dicts;
2. `compress.activation_scores` on the validation batches (carved from the training
   rows); `keep_units` at each `--sparsities` value; `shrink_graph(check=True)`;
3. each shrunk network is trained `--finetune-epochs` more (prune, then tune), and the
   largest sparsity whose validation accuracy is within `--tolerance` of the dense
   network's is chosen;
4. `bp.choose_restoration` restores the chosen network's uncertainty (every method, the
   library's defaults) on the validation rows as a length-grouped loader whose batches
   are each padded to their own longest sequence (Hugging Face's `group_by_length` and
   `DataCollatorWithPadding`); the test rows are read once, for the dense, the chosen
   and the restored network.

The deterministic BERT trained by the same `bp.fit` call is the reference. transformers is
not a dependency of bayesprune; its `hf` extra installs it beside the bench extra:

    pip install -e ".[bench,hf]"
    python benchmarks/hf_text_path.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from typing import Any

import torch
from _common import add_results_dir_option, md_table, mean_sd, use_results_dir, write_results
from graph_groups import torchvision_models
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import bayesprune as bp
from bayesprune import compress
from bayesprune.metrics import example_flops

NAME = "hf_text_path"
VOCAB, LENGTH = 200, 24


def make_texts(n: int, seed: int) -> tuple[dict[str, Tensor], Tensor]:
    """`n` padded sequences and their labels; token polarities are fixed (seed 0)."""
    polarity = torch.randn(VOCAB, generator=torch.Generator().manual_seed(0))
    polarity[:3] = 0.0  # padding and special tokens carry nothing
    gen = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(3, VOCAB, (n, LENGTH), generator=gen)
    lengths = torch.randint(4, LENGTH + 1, (n,), generator=gen)
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    ids[mask == 0] = 0
    score = (polarity[ids] * mask).sum(1) / lengths.sqrt()
    labels = torch.bernoulli(torch.sigmoid(2.0 * score), generator=gen).long()
    return {"input_ids": ids, "attention_mask": mask}, labels


class Rows(Dataset):
    """One dict per example, as a Hugging Face dataset hands them to a collator."""

    def __init__(self, x: dict[str, Tensor], y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {**{k: v[i] for k, v in self.x.items()}, "labels": self.y[i]}


def padded_apart(data: tuple[dict[str, Tensor], Tensor], batch_size: int) -> DataLoader:
    """The rows grouped by length, each batch padded to its own longest sequence: batches
    of different lengths, as a length-grouped sampler and a padding collator give them."""
    x, y = data
    order = x["attention_mask"].sum(1).argsort(stable=True)
    grouped = Rows({k: v[order] for k, v in x.items()}, y[order])
    return DataLoader(grouped, batch_size=batch_size, collate_fn=_to_longest)


def _to_longest(batch: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    longest = max(int(row["attention_mask"].sum()) for row in batch)
    return {
        k: torch.stack([row[k][:longest] if row[k].ndim else row[k] for row in batch])
        for k in batch[0]
    }


def build_bert(transformers: Any) -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=LENGTH,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _evaluate(model: nn.Module, data: tuple[dict[str, Tensor], Tensor], samples: int) -> dict:
    """Accuracy, NLL and ECE of the Monte-Carlo predictive (`samples` draws; one pass of
    the posterior mean or of a deterministic network for `samples=1`)."""
    mode = "mc" if samples > 1 else "mean"
    scores = bp.evaluate(model, data, mode=mode, samples=samples, seed=0)
    return {k: scores[k] for k in ("accuracy", "nll", "ece")}


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_seed(transformers: Any, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    x, y = make_texts(args.train + args.val, seed=0)
    train = ({k: v[: args.train] for k, v in x.items()}, y[: args.train])
    val = ({k: v[args.train :] for k, v in x.items()}, y[args.train :])
    test = make_texts(args.test, seed=1)
    fit = dict(epochs=args.epochs, lr=args.lr, seed=seed, progress=False)
    torch.manual_seed(seed)
    plain = build_bert(transformers)
    example = {k: v[:8] for k, v in train[0].items()}
    model = bp.convert(copy.deepcopy(plain), "gaussian", example_inputs=example)
    row: dict[str, Any] = {"seed": seed}
    started = time.perf_counter()
    bp.fit(plain, DataLoader(Rows(*train), batch_size=args.batch_size, shuffle=True), **fit)
    row["deterministic_fit_s"] = time.perf_counter() - started
    started = time.perf_counter()
    bp.fit(model, DataLoader(Rows(*train), batch_size=args.batch_size, shuffle=True), **fit)
    row["bayesian_fit_s"] = time.perf_counter() - started
    dense_val = _evaluate(model, val, args.samples)
    scores = compress.activation_scores(model.eval(), DataLoader(Rows(*val), batch_size=100))
    finite = {n: s for n, s in scores.items() if torch.isfinite(s).any()}
    chosen, tried = None, []
    for sparsity in args.sparsities:
        small = compress.shrink_graph(
            model, example, prune_units=compress.keep_units(finite, sparsity=sparsity)
        )
        if args.finetune_epochs:  # the survivors trained on: the usual prune-then-tune
            loader = DataLoader(Rows(*train), batch_size=args.batch_size, shuffle=True)
            bp.fit(small.model, loader, **{**fit, "epochs": args.finetune_epochs})
        accuracy = _evaluate(small.model, val, args.samples)["accuracy"]
        tried.append({"sparsity": sparsity, "val_accuracy": accuracy})
        if accuracy >= dense_val["accuracy"] - args.tolerance:
            chosen = (sparsity, small)
    row["validation"] = tried
    row["dense_val_accuracy"], row["dense_val_nll"] = dense_val["accuracy"], dense_val["nll"]
    row["deterministic"] = _evaluate(plain, test, 1)
    row["bayesian"] = _evaluate(model, test, args.samples)
    if chosen is not None:
        sparsity, small = chosen
        row["chosen_sparsity"] = sparsity
        row["shrunk"] = _evaluate(small.model, test, args.samples)
        row["parameters_kept"] = _parameters(small.model) / _parameters(model)
        row["flops_kept"] = example_flops(small.model, example) / example_flops(model, example)
        row["shrunk_minus_masked"] = small.max_abs_difference
        row.update(_onnx(model, small.model, example, test[0], args.latency_repeats))
        if args.restore:
            started = time.perf_counter()
            choice = bp.choose_restoration(
                small.model, padded_apart(val, 100), trained=model, samples=args.samples,
                train=DataLoader(Rows(*train), batch_size=args.batch_size, shuffle=True),
            )  # fmt: skip
            row["restore_s"] = time.perf_counter() - started
            row["restore_method"] = choice.method
            row["restore_candidates"] = {
                m: {**c["validation"], "eligible": c["eligible"]}
                for m, c in choice.candidates.items()
            }
            row["restored"] = _evaluate(choice.model, test, args.samples)
    print(row, flush=True)
    return row


def _onnx(
    dense: nn.Module, small: nn.Module, example: dict, test_x: dict, repeats: int
) -> dict[str, float]:
    """Both networks exported by name (any batch and length), the shrunk one checked in
    onnxruntime on 32 test rows, and their onnxruntime latency on those rows (medians,
    the two interleaved)."""
    import tempfile

    import onnxruntime as ort

    free = {0: "batch", 1: "tokens"}
    axes = {"input_ids": free, "attention_mask": free}
    rows = {k: v[:32] for k, v in test_x.items()}
    feed = {k: v.numpy() for k, v in rows.items()}
    sessions, times = {}, {"dense": [], "shrunk": []}
    with tempfile.TemporaryDirectory() as folder:
        for name, net in (("dense", dense), ("shrunk", small)):
            path = compress.export_onnx(
                net, f"{folder}/{name}.onnx", example_inputs=example, dynamic_axes=axes
            )
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            sessions[name] = ort.InferenceSession(str(path), options)
            if name == "shrunk":
                difference = compress.onnx_difference(path, small, rows)
        for _ in range(repeats):
            for name, session in sessions.items():
                started = time.perf_counter()
                session.run(None, feed)
                times[name].append(time.perf_counter() - started)
    dense_ms, small_ms = (1000 * statistics.median(times[n]) for n in ("dense", "shrunk"))
    return {
        "onnx_minus_torch": difference,
        "onnx_ms_dense_batch32": dense_ms,
        "onnx_ms_shrunk_batch32": small_ms,
    }


def render(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    table = []
    for network in ("deterministic", "bayesian", "shrunk", "restored"):
        got = [r[network] for r in rows if network in r]
        if not got:
            continue
        table.append(
            {
                "network": network,
                "seeds": len(got),
                "test accuracy": mean_sd([g["accuracy"] for g in got]),
                "test NLL": mean_sd([g["nll"] for g in got]),
                "test ECE": mean_sd([g["ece"] for g in got]),
            }
        )
    kept = [r for r in rows if "shrunk" in r]
    if not kept:
        return md_table(table) + "\nNo sparsity tried held the validation accuracy.\n"
    lines = [
        md_table(table),
        f"Chosen sparsity (validation): {[r.get('chosen_sparsity') for r in rows]}; "
        f"parameters kept {mean_sd([r['parameters_kept'] for r in kept], 3)}, FLOPs kept "
        f"{mean_sd([r['flops_kept'] for r in kept], 3)}; largest shrunk − masked "
        f"{max(r['shrunk_minus_masked'] for r in kept):.1e}.\n",
        f"onnxruntime (one thread, 32 test rows, medians of {settings['latency_repeats']} "
        f"interleaved runs): dense {mean_sd([r['onnx_ms_dense_batch32'] for r in kept], 2)} ms, "
        f"shrunk {mean_sd([r['onnx_ms_shrunk_batch32'] for r in kept], 2)} ms; shrunk ONNX − "
        f"torch {max(r['onnx_minus_torch'] for r in kept):.1e}.\n",
        f"Restoring method chosen on validation (shrunk → restored): "
        f"{[r.get('restore_method') for r in kept]}.\n",
        f"Seconds per fit: deterministic {mean_sd([r['deterministic_fit_s'] for r in rows], 1)}, "
        f"Bayesian {mean_sd([r['bayesian_fit_s'] for r in rows], 1)} (one run each, not "
        "interleaved: a rough figure).\n",
        f"\nSettings: {settings}\n",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-repeats", type=int, default=50)
    parser.add_argument(
        "--no-restore", dest="restore", action="store_false", help="skip choose_restoration"
    )
    parser.add_argument("--name", default=NAME)
    add_results_dir_option(parser)
    args = parser.parse_args()
    use_results_dir(args)
    torch.set_num_threads(args.threads)
    torchvision_models()  # transformers imports torchvision where installed
    import transformers

    settings = {k: v for k, v in vars(args).items() if k != "name"}
    settings["transformers"] = transformers.__version__
    rows = []
    for seed in args.seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convert's notes on tied or read layers
            rows.append(run_seed(transformers, seed, args))
        write_results(args.name, {"settings": settings, "rows": rows}, render(rows, settings))


if __name__ == "__main__":
    main()
