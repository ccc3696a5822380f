"""The application layer behind the CLI and the demo: a run folder driven by a config.

One job per module:

| module | job |
|---|---|
| `config` | the run config dataclasses; their choices come from the library's tables |
| `schema` | strict parsing of a YAML mapping against a dataclass (one clear error) |
| `data` | the splits a config names, shaped for its model |
| `factory` | the model and the likelihood of a config (asks the `Family` record) |
| `folder` | the run folder: config.yaml, log, JSON records, models |
| `transaction` | the folder's lock; each step's files published together with a manifest |
| `policy` | what "auto" means (asks the `Family` record) |
| `steps` | train, evaluate, compress, select features, export; each writes one JSON |
| `summaries` | posterior histograms recorded for the report |
| `report` | the HTML / markdown report, rendered only from the steps' JSON |
| `threads` | run a block with a given number of CPU threads |
"""

from .config import ConfigError, RunConfig, dump_config, load_config, parse_config
from .folder import Run
from .report import build_report
from .steps import compress_run, evaluate_run, export_run, select_features, train_run

__all__ = [
    "ConfigError",
    "Run",
    "RunConfig",
    "build_report",
    "compress_run",
    "dump_config",
    "evaluate_run",
    "export_run",
    "load_config",
    "parse_config",
    "select_features",
    "train_run",
]
