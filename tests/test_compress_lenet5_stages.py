"""`--kl-weight-stages` of benchmarks/compress_lenet5.py: parsed into fit's staged `kl_weight`.

fit's stages themselves are tested in tests/test_kl_schedule.py; here the script's
parsing, its length rule, and that the stages reach `fit` as the KL weight.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from compress_lenet5 import check_stages, kl_stage


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--svd-epochs", type=int)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--kl-weight-stages", type=kl_stage, nargs="+")
    return parser


def test_stages_set_the_length_and_are_fit_kl_weight() -> None:
    parser = _parser()
    args = parser.parse_args(["--kl-weight-stages", "4:2", "1:3"])
    check_stages(parser, args)
    assert args.svd_epochs == 5
    assert args.kl_weight_stages == [(4.0, 2), (1.0, 3)]


@pytest.mark.parametrize(
    "argv", [["--kl-weight-stages", "4:2", "--kl-weight", "2"], ["--kl-weight-stages", "4:2",
             "--svd-epochs", "9"]]
)  # fmt: skip
def test_stages_conflicting_with_other_options_are_refused(argv: list[str]) -> None:
    parser = _parser()
    with pytest.raises(SystemExit):
        check_stages(parser, parser.parse_args(argv))


@pytest.mark.parametrize("text", ["4", "4:0", "-1:3", "a:3", "4:x"])
def test_malformed_stage_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="BETA:EPOCHS"):
        kl_stage(text)
