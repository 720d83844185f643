"""Training metrics: JSONL always, TensorBoard events when the ``tensorboard`` package is installed, MFU.

What it does: ``MetricsLog`` appends one JSON object per record to ``RUN/metrics.jsonl`` (flushed each
time) and mirrors scalars to TensorBoard (``RUN/tensorboard/``) only when ``torch.utils.tensorboard`` can be
imported; on resume, records after the checkpoint step are dropped so the file reads as one run.
``mfu`` is model FLOPs utilisation: achieved training FLOPs per second over the peak of the device.
What it does not do: draw plots or aggregate runs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

#: Default peak FLOP/s for MFU by device type when ``log.peak_flops`` is null. CPU: 1e12, a round guess
#: for a few modern cores in fp32 (AVX-512 FMA); CUDA: 312e12, A100 bf16 dense (nanoGPT's reference).
PEAK_FLOPS: dict[str, float] = {"cpu": 1.0e12, "cuda": 312.0e12}

METRICS_FILE = "metrics.jsonl"


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Fraction of peak: ``tokens/s * training FLOPs per token / peak FLOP/s``."""
    return tokens_per_s * flops_per_token / peak_flops


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """Cross-entropy in nats per token -> bits per UTF-8 byte: ``loss / ln 2 / bytes_per_token``."""
    return loss_nats / math.log(2) / bytes_per_token


def tensorboard_writer(log_dir: Path) -> tuple[Any, str | None]:
    """A ``SummaryWriter``, or ``(None, reason)`` when TensorBoard is not importable."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch's module raises ImportError when `tensorboard` is missing
        return None, f"TensorBoard events not written: {e} (pip install tensorboard)"
    return SummaryWriter(log_dir=str(log_dir)), None


def _step_of(line: str) -> float:
    """The ``step`` of a JSONL record; a torn last line (killed mid-write) counts as infinitely late."""
    try:
        return float(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError):
        return math.inf


class MetricsLog:
    """Append-only JSONL log with an optional TensorBoard mirror."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, resume_step: int | None = None) -> None:
        self.path = run_dir / METRICS_FILE
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= resume_step]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(f"{line}\n" for line in kept))
            os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.tb: Any = None
        self.tb_note: str | None = "TensorBoard disabled by log.tensorboard=false"
        if tensorboard:
            self.tb, self.tb_note = tensorboard_writer(run_dir / "tensorboard")

    def write(self, kind: str, step: int, **values: float | int | str) -> None:
        """One record ``{"kind": kind, "step": step, ...values}``; numbers also go to TensorBoard."""
        record = {"kind": kind, "step": step, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()
