"""Which Hugging Face transformers models go through the graph path: convert → score → shrink.

Hugging Face's forwards unpack `input_ids.size()`, branch on `mask.dim()` and make masks
when an argument is None, which fx's symbolic trace cannot follow; `shrink_graph` then
traces them with the example's values (docs/byom.md, section 13). Each model is built
from a small configuration of its architecture (random weights, seeded, eval mode, no
download), then as `timm_coverage.py` runs timm's:

1. `bp.convert(model, family, example_inputs=...)` (layers whose weights the forward
   reads itself or ties, GPT-2's output layer, ViT's patch projection, stay plain);
2. `compress.activation_scores` on one example (2 sequences of 16 token ids, or 2 images
   of 32 × 32); the layers with a finite score (not pinned) are counted;
3. `keep_units(sparsity=0.25)` on those, `shrink_graph(check=True)`.

`--pinned` names the three operations that pin the most units. transformers is not a
dependency of bayesprune; its `hf` extra installs it beside the bench extra:

    pip install -e ".[bench,hf]"
    python benchmarks/hf_coverage.py --pinned
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from _common import write_results
from graph_groups import torchvision_models
from timm_coverage import _convert_takes_inputs, _pins, coverage_args
from timm_coverage import render as coverage_report
from torchvision_coverage import failure, measure

import bayesprune as bp

NAME = "hf_coverage"
TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
VOCAB = 1000


def _builders(tf: Any) -> dict[str, tuple[Callable[[], torch.nn.Module], str]]:
    """name → (a builder of the model from a small configuration, its input kind)."""
    text = dict(TEXT, vocab_size=VOCAB)
    image = dict(TEXT, image_size=32, patch_size=8, num_labels=10)
    decoder = dict(text, num_key_value_heads=2, max_position_embeddings=64)  # Llama's family
    gpt2 = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB)
    bart = dict(
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        vocab_size=VOCAB, max_position_embeddings=64,
    )  # fmt: skip
    return {
        "bert": (lambda: tf.BertForSequenceClassification(tf.BertConfig(**text)), "text"),
        "roberta": (
            lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(**text)),
            "text",
        ),
        "electra": (
            lambda: tf.ElectraForSequenceClassification(
                tf.ElectraConfig(**text, embedding_size=64)
            ),
            "text",
        ),
        "distilbert": (
            lambda: tf.DistilBertForSequenceClassification(
                tf.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=VOCAB)
            ),
            "text",
        ),
        "albert": (
            lambda: tf.AlbertForSequenceClassification(tf.AlbertConfig(**text, embedding_size=32)),
            "text",
        ),
        "bert_mlm": (  # its decoder is tied to the word embeddings
            lambda: tf.BertForMaskedLM(tf.BertConfig(**text)),
            "text",
        ),
        "xlm_roberta": (
            lambda: tf.XLMRobertaForSequenceClassification(tf.XLMRobertaConfig(**text)),
            "text",
        ),
        "mpnet": (
            lambda: tf.MPNetForSequenceClassification(tf.MPNetConfig(**text)),
            "text",
        ),
        "mobilebert": (
            lambda: tf.MobileBertForSequenceClassification(
                tf.MobileBertConfig(
                    vocab_size=VOCAB,
                    hidden_size=64,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    intermediate_size=128,
                    embedding_size=32,
                    intra_bottleneck_size=32,
                    true_hidden_size=32,
                )
            ),
            "text",
        ),
        "gpt2_cls": (  # pools at the last token before padding
            lambda: tf.GPT2ForSequenceClassification(tf.GPT2Config(**gpt2, pad_token_id=0)),
            "text",
        ),
        "llama_cls": (
            lambda: tf.LlamaForSequenceClassification(tf.LlamaConfig(**decoder, pad_token_id=0)),
            "text",
        ),
        "gpt2": (
            lambda: tf.GPT2LMHeadModel(tf.GPT2Config(**gpt2)),
            "text",
        ),
        "llama": (
            lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**decoder)),
            "text",
        ),
        "mistral": (
            lambda: tf.MistralForCausalLM(tf.MistralConfig(**decoder)),
            "text",
        ),
        "qwen2": (
            lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**decoder)),
            "text",
        ),
        "gemma": (
            lambda: tf.GemmaForCausalLM(tf.GemmaConfig(**decoder, head_dim=16)),
            "text",
        ),
        "phi": (
            lambda: tf.PhiForCausalLM(tf.PhiConfig(**text, max_position_embeddings=64)),
            "text",
        ),
        "gpt_neox": (
            lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**text, max_position_embeddings=64)),
            "text",
        ),
        "opt": (
            lambda: tf.OPTForCausalLM(
                tf.OPTConfig(
                    hidden_size=64,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    ffn_dim=128,
                    vocab_size=VOCAB,
                    word_embed_proj_dim=64,
                    max_position_embeddings=64,
                )
            ),
            "text",
        ),
        "bloom": (
            lambda: tf.BloomForCausalLM(
                tf.BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=VOCAB)
            ),
            "text",
        ),
        "bart": (  # pools at the end-of-sentence token: the example ends with one
            lambda: tf.BartForSequenceClassification(tf.BartConfig(**bart)),
            "text ending in 2",
        ),
        "bart_lm": (  # encoder-decoder; it returns the encoder's stream among its outputs
            lambda: tf.BartForConditionalGeneration(tf.BartConfig(**bart)),
            "text",
        ),
        "t5_encoder": (
            lambda: tf.T5EncoderModel(
                tf.T5Config(
                    d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=VOCAB
                )
            ),
            "text",
        ),
        "deberta_v2": (
            lambda: tf.DebertaV2ForSequenceClassification(
                tf.DebertaV2Config(**text, max_position_embeddings=64)
            ),
            "text",
        ),
        "vit": (lambda: tf.ViTForImageClassification(tf.ViTConfig(**image)), "image"),
        "swin": (
            lambda: tf.SwinForImageClassification(
                tf.SwinConfig(
                    image_size=32,
                    patch_size=4,
                    embed_dim=16,
                    depths=[1, 1],
                    num_heads=[2, 4],
                    window_size=4,
                    num_labels=10,
                )
            ),
            "image",
        ),
        "segformer": (
            lambda: tf.SegformerForImageClassification(
                tf.SegformerConfig(
                    num_encoder_blocks=2,
                    depths=[1, 1],
                    sr_ratios=[2, 1],
                    hidden_sizes=[16, 32],
                    num_attention_heads=[1, 2],
                    patch_sizes=[7, 3],
                    strides=[4, 2],
                    num_labels=10,
                )
            ),
            "image",
        ),
        "convnext": (
            lambda: tf.ConvNextForImageClassification(
                tf.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)
            ),
            "image",
        ),
        "resnet": (
            lambda: tf.ResNetForImageClassification(
                tf.ResNetConfig(
                    hidden_sizes=[16, 32], depths=[1, 1], embedding_size=16, num_labels=10
                )
            ),
            "image",
        ),
    }


def _example(kind: str) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    if kind.startswith("text"):
        ids = torch.randint(0, VOCAB, (2, 16), generator=gen)
        if kind == "text ending in 2":
            ids[:, -1] = 2
        return (ids,)
    return (torch.randn(2, 3, 32, 32, generator=gen),)


def probe(
    build: Callable[[], torch.nn.Module], kind: str, name: str, family: str, pinned: bool
) -> dict[str, Any]:
    start = time.perf_counter()
    row: dict[str, Any] = {"model": name}
    try:
        torch.manual_seed(0)
        net = build().eval()
        row["parameters"] = sum(p.numel() for p in net.parameters())
        x = _example(kind)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            given = {"example_inputs": x} if _convert_takes_inputs() else {}  # older: none
            model = bp.convert(net, family, **given).eval()
        kept = [
            str(w.message).split(": ", 1)[1].split(". A Bayesian")[0]
            for w in caught
            if w.category.__name__ == "KeptDeterministicWarning"  # absent from older code
        ]
        row["kept_plain"] = "; ".join(kept)
        if pinned:
            row["pinned_by"] = _pins(model, x[0])
        row.update(measure(model, x))
    except Exception as err:  # a user's view: the first line of what they would see
        row.update(failure(err))
    row["seconds"] = round(time.perf_counter() - start, 1)
    print(row, flush=True)
    return row


def render(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    return coverage_report(rows, settings, {"kept plain by convert": "kept_plain"})


def main() -> None:
    args = coverage_args(__doc__, NAME, None, "default: every builder")
    torchvision_models()  # transformers imports torchvision where installed
    import transformers

    builders = _builders(transformers)
    names = args.models or list(builders)
    settings = {k: v for k, v in vars(args).items() if k not in ("name", "results_dir")}
    settings.update(models=names, transformers=transformers.__version__)
    settings["convert_example_inputs"] = _convert_takes_inputs()
    rows: list[dict[str, Any]] = []
    for name in names:
        build, kind = builders[name]
        rows.append(probe(build, kind, name, args.family, args.pinned))
        write_results(args.name, {"settings": settings, "rows": rows}, render(rows, settings))


if __name__ == "__main__":
    main()
