"""`mvit export`'s INT8 flags: combinations that cannot mean anything are refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--quantize", "int8", "--quantizer", "nncf"], "--quantizer nncf needs --calibration IMAGES/"),
        (
            ["--quantizer", "nncf", "--calibration", "."],
            "--quantizer and --calibration go with --quantize int8",
        ),
        (["--calibration", "."], "--quantizer and --calibration go with --quantize int8"),
        (["--quantize", "int8", "--quantizer", "tflite"], "invalid choice: 'tflite'"),
    ],
)
def test_meaningless_combinations_are_refused(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = main(["export", str(tmp_path / "no-such-model"), *flags])
    except SystemExit as exit:  # argparse's own refusals
        status = exit.code
    assert status not in (0, None)
    assert message in capsys.readouterr().err
