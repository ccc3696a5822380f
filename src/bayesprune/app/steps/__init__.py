"""The steps a run goes through; each reads the run folder and writes one JSON.

| step | writes |
|---|---|
| `train_run` | model.safetensors, metrics.json (history, test metrics, posterior summary) |
| `evaluate_run` | evaluation.json (metrics per mode, reliability, pruning curve) |
| `compress_run` | compressed/model.safetensors, compressed/compression.json |
| `restore_run` | restored/model.safetensors, restored/restore.json |
| `select_features` | features.json |
| `export_run` | export/model.onnx, export/model.safetensors, export/export.json |
"""

from ..config import with_overrides
from .compress import compress_run, compression_masks
from .evaluate import evaluate_model, evaluate_run, model_entry
from .export import export_run
from .features import feature_scores, select_features
from .restore import load_restored, restore_run
from .train import train_run

__all__ = [
    "compress_run",
    "compression_masks",
    "evaluate_model",
    "evaluate_run",
    "export_run",
    "feature_scores",
    "load_restored",
    "model_entry",
    "restore_run",
    "select_features",
    "train_run",
    "with_overrides",
]
