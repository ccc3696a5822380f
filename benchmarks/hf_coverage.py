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
from _common import recorded_settings, write_results
from graph_groups import torchvision_models
from timm_coverage import _convert_takes_inputs, _pins, coverage_args
from timm_coverage import render as coverage_report
from torchvision_coverage import failure, measure

import bayesprune as bp

NAME = "hf_coverage"
TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
VOCAB = 1000
AUDIO = dict(
    num_mel_bins=16, max_source_positions=16, max_target_positions=32, pad_token_id=0,
    bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
)  # fmt: skip


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
    t5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=VOCAB)
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
        "t5": (  # encoder-decoder: `decoder_input_ids` by name
            lambda: tf.T5ForConditionalGeneration(tf.T5Config(**t5)),
            "text pair by name",
        ),
        "bart_lm_by_name": (
            lambda: tf.BartForConditionalGeneration(tf.BartConfig(**bart)),
            "text pair by name",
        ),
        "marian": (
            lambda: tf.MarianMTModel(tf.MarianConfig(**bart, pad_token_id=0)),
            "text pair by name",
        ),
        "whisper": (
            lambda: tf.WhisperForConditionalGeneration(
                tf.WhisperConfig(
                    **{k: v for k, v in bart.items() if k != "max_position_embeddings"},
                    **AUDIO,
                )
            ),
            "audio by name",
        ),
        "bert_padded": (  # a tokenizer's padded batch, by name
            lambda: tf.BertForSequenceClassification(tf.BertConfig(**text)),
            "text by name",
        ),
        "llama_padded": (
            lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**decoder)),
            "text by name",
        ),
        "t5_encoder": (
            lambda: tf.T5EncoderModel(tf.T5Config(**t5)),
            "text",
        ),
        "deberta_v2": (
            lambda: tf.DebertaV2ForSequenceClassification(
                tf.DebertaV2Config(**text, max_position_embeddings=64)
            ),
            "text",
        ),
        "deberta_v3": (  # relative positions through the shared key / query projections
            lambda: tf.DebertaV2ForSequenceClassification(
                tf.DebertaV2Config(
                    **text,
                    max_position_embeddings=64,
                    relative_attention=True,
                    pos_att_type=["p2c", "c2p"],
                    share_att_key=True,
                    position_buckets=16,
                    norm_rel_ebd="layer_norm",
                )
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
        **_session_30(tf, text, decoder, bart),
    }


def _session_30(
    tf: Any, text: dict[str, Any], decoder: dict[str, Any], bart: dict[str, Any]
) -> dict[str, tuple[Callable[[], torch.nn.Module], str]]:
    """The rows added in session 30 (other families, two modalities, audio)."""
    vision = dict(TEXT, image_size=32, patch_size=8)
    special = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return {
        "falcon": (  # its `FalconLinear`: an nn.Linear with a forward of its own
            lambda: tf.FalconForCausalLM(
                tf.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                vocab_size=VOCAB)
            ),
            "text",
        ),
        "mixtral": (  # mixture of experts: the tokens routed by value
            lambda: tf.MixtralForCausalLM(
                tf.MixtralConfig(**decoder, num_local_experts=4, num_experts_per_tok=2)
            ),
            "text",
        ),
        "gptj": (
            lambda: tf.GPTJForCausalLM(
                tf.GPTJConfig(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, rotary_dim=8,
                              n_positions=64)
            ),
            "text",
        ),
        "gpt_bigcode": (
            lambda: tf.GPTBigCodeForCausalLM(
                tf.GPTBigCodeConfig(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB,
                                    n_positions=64)
            ),
            "text",
        ),
        "modernbert": (
            lambda: tf.ModernBertForSequenceClassification(
                tf.ModernBertConfig(**text, reference_compile=False, cls_token_id=1,
                                    sep_token_id=2, **special)
            ),
            "text by name",
        ),
        "pegasus": (
            lambda: tf.PegasusForConditionalGeneration(tf.PegasusConfig(**bart)),
            "text pair by name",
        ),
        "clip": (  # two towers: token ids and pixels by name
            lambda: tf.CLIPModel(
                tf.CLIPConfig(text_config=dict(text, max_position_embeddings=32),
                              vision_config=vision, projection_dim=32)
            ),
            "text and image by name",
        ),
        "wav2vec2": (  # raw audio through a convolutional feature encoder
            lambda: tf.Wav2Vec2ForSequenceClassification(
                tf.Wav2Vec2Config(**TEXT, conv_dim=(32, 32), conv_stride=(5, 2),
                                  conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                  num_conv_pos_embedding_groups=4)
            ),
            "audio",
        ),
        "dinov2": (
            lambda: tf.Dinov2ForImageClassification(
                tf.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                mlp_ratio=2, image_size=32, patch_size=8, num_labels=10)
            ),
            "image",
        ),
        "beit": (
            lambda: tf.BeitForImageClassification(
                tf.BeitConfig(**vision, num_labels=10, use_relative_position_bias=True)
            ),
            "image",
        ),
        "mobilevit": (
            lambda: tf.MobileViTForImageClassification(
                tf.MobileViTConfig(image_size=32, hidden_sizes=[32, 48, 64],
                                   neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_labels=10)
            ),
            "image",
        ),
        "squeezebert": (
            lambda: tf.SqueezeBertForSequenceClassification(
                tf.SqueezeBertConfig(**text, embedding_size=64)
            ),
            "text",
        ),
        "funnel": (
            lambda: tf.FunnelForSequenceClassification(
                tf.FunnelConfig(d_model=64, n_head=4, d_head=16, d_inner=128,
                                block_sizes=[1, 1], vocab_size=VOCAB)
            ),
            "text",
        ),
    }  # fmt: skip


def _example(kind: str) -> tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
    """The example of an input kind: a tuple by position, or a dict by name (a padded
    batch as a tokenizer gives it, an encoder-decoder's `decoder_input_ids`)."""
    gen = torch.Generator().manual_seed(0)
    if kind == "audio":  # 0.05 s of 16 kHz samples
        return (torch.randn(2, 800, generator=gen),)
    if kind == "text and image by name":
        pixels = torch.randn(2, 3, 32, 32, generator=gen)
        return {"input_ids": _ids(gen, 16), "pixel_values": pixels}
    if kind == "audio by name":  # log-mel frames: 2 × mel bins × 2 · source positions
        features = torch.randn(2, AUDIO["num_mel_bins"], 2 * AUDIO["max_source_positions"])
        return {"input_features": features, "decoder_input_ids": _ids(gen, 8)}
    if kind.startswith("text"):
        ids = _ids(gen, 16)
        if kind == "text ending in 2":
            ids[:, -1] = 2
        if not kind.endswith("by name"):
            return (ids,)
        mask = torch.ones_like(ids)
        mask[1, 12:] = 0  # the second sequence is padded
        named = {"input_ids": ids, "attention_mask": mask}
        if kind == "text pair by name":
            named["decoder_input_ids"] = _ids(gen, 8)
        return named
    return (torch.randn(2, 3, 32, 32, generator=gen),)


def _ids(gen: torch.Generator, tokens: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, tokens), generator=gen)


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
            row["pinned_by"] = _pins(model, x if isinstance(x, dict) else x[0])
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
    settings = recorded_settings(args)
    settings.update(models=names, transformers=transformers.__version__)
    settings["convert_example_inputs"] = _convert_takes_inputs()
    rows: list[dict[str, Any]] = []
    for name in names:
        build, kind = builders[name]
        rows.append(probe(build, kind, name, args.family, args.pinned))
        write_results(args.name, {"settings": settings, "rows": rows}, render(rows, settings))


if __name__ == "__main__":
    main()
