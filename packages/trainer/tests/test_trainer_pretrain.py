"""The pretraining recipe end to end on a tiny model: learning, outputs, determinism, exact resume, errors."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from nanoforge.core_model.checkpoint import load_model
from nanoforge.tokenizer import load_tokenizer
from nanoforge.trainer.checkpoint import list_checkpoints
from nanoforge.trainer.config import PretrainConfig
from nanoforge.trainer.pretrain import NonFiniteLoss, load_run_config, resolve_dtype, run

Cfg = Callable[..., PretrainConfig]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_learns_and_writes_everything(tiny_cfg: Cfg, tmp_path: Path, data_dir: Path) -> None:
    run_dir = tmp_path / "run"
    logged: list[dict] = []
    summary = run(tiny_cfg("train.max_iters=60", "train.eval_interval=20"), run_dir, on_log=logged.append)
    recs = _records(run_dir)
    assert recs == logged  # the JSONL is exactly what was reported
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 20, 40, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0  # ln(300) = 5.7 at init; it learns
    manifest = json.loads((data_dir / "manifest.json").read_text())
    bpt = manifest["splits"]["val"]["bytes_per_token"]
    assert evals[-1]["val_bpb"] == pytest.approx(evals[-1]["val_loss"] / math.log(2) / bpt)
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(5, 61, 5))
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in train)
    assert train[-1]["tokens"] == 60 * 4 * 16
    # checkpoints: every 10 steps, last 2 kept; the resolved config saved; the final model loads
    assert [c.step for c in list_checkpoints(run_dir)] == [50, 60]
    saved = load_run_config(run_dir)
    assert saved.model["vocab_size"] == 320  # 300 rounded up to a multiple of 64
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["max_iters"] == 60
    model = load_model(run_dir / "final")
    assert model.config.vocab_size == 320 and summary["step"] == 60
    tok = load_tokenizer(run_dir / "final" / "tokenizer")
    assert tok.vocab_size == 300
    gen = json.loads((run_dir / "final" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.special_tokens["<|endoftext|>"]
    if importlib.util.find_spec("tensorboard") is not None:
        assert summary["tensorboard"] == "written" and any((run_dir / "tensorboard").iterdir())
    else:  # optional: the run says so instead of failing
        assert "pip install tensorboard" in summary["tensorboard"] and not (run_dir / "tensorboard").exists()
        assert recs[0]["kind"] == "note" and "TensorBoard events not written" in recs[0]["message"]


def test_same_seed_same_weights_other_seed_differs(tiny_cfg: Cfg, tmp_path: Path) -> None:
    run(tiny_cfg("train.max_iters=12"), tmp_path / "a")
    run(tiny_cfg("train.max_iters=12"), tmp_path / "b")
    run(tiny_cfg("train.max_iters=12", "train.seed=2"), tmp_path / "c")
    a, b, c = (_weights(tmp_path / n / "final") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_kill_mid_run_then_resume_is_bitwise_exact(
    tiny_cfg: Cfg, tiny_overrides: list[str], tmp_path: Path
) -> None:
    """SIGKILL a real training process after its first checkpoint, resume, compare with an uninterrupted run."""
    extra = [
        "train.max_iters=300",
        "train.eval_interval=1000",
        "checkpoint.interval=20",
        "checkpoint.keep_last=3",
    ]
    cfg = tiny_cfg(*extra)
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nanoforge.cli", "train", "pretrain", "--config", "shakespeare-char"]
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed), *tiny_overrides, *extra], env=env, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    try:
        while not list_checkpoints(killed):
            assert proc.poll() is None, (
                f"training exited early: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    at_kill = [c.step for c in list_checkpoints(killed)]
    assert at_kill and at_kill[-1] < 300 and not (killed / "final").exists()

    summary = run(cfg, killed, resume=True)  # in this process: a different process, same result
    assert summary["step"] == 300
    run(cfg, tmp_path / "straight")
    resumed, straight = _weights(killed / "final"), _weights(tmp_path / "straight" / "final")
    assert resumed.keys() == straight.keys()
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), (
            f"{k} differs after resume (killed at step {at_kill[-1]})"
        )
    steps = [r["step"] for r in _records(killed) if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 300  # the metrics read as one run


def test_resume_errors(tiny_cfg: Cfg, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="--resume: no checkpoint in"):
        run(tiny_cfg(), run_dir, resume=True)
    run(tiny_cfg("train.max_iters=10"), run_dir)
    with pytest.raises(ValueError, match=r"already holds checkpoints .*pass --resume or choose a new --out"):
        run(tiny_cfg("train.max_iters=10"), run_dir)
    with pytest.raises(ValueError, match=r"incompatible model.*'d_model': \(32, 64\)"):
        run(tiny_cfg("train.max_iters=20", "model.d_model=64"), run_dir, resume=True)
    assert load_run_config(run_dir).model["d_model"] == 32  # the refused config did not replace the run's
    stale = run_dir / "checkpoints" / ".tmp-step-00000015-x1"  # what a kill during a save leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a file")
    assert [c.step for c in list_checkpoints(run_dir)] == [10]  # never taken for a checkpoint
    summary = run(tiny_cfg("train.max_iters=20"), run_dir, resume=True)  # a longer run continues
    assert summary["step"] == 20 and not stale.exists()
    again = run(tiny_cfg("train.max_iters=20"), run_dir, resume=True)  # nothing left to do: re-export
    assert again["step"] == 20 and again["eval"] == summary["eval"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_cfg: Cfg, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cfg = tiny_cfg(
        "optim.lr=1e30",
        "schedule.min_lr=0",
        "schedule.warmup_iters=0",
        "train.grad_clip=0",
        "checkpoint.interval=1",
        "checkpoint.keep_last=100",
        "train.max_iters=30",
    )
    with pytest.raises(
        NonFiniteLoss, match=r"loss is (nan|inf) at step (\d+); stopped without saving"
    ) as info:
        run(cfg, run_dir)
    bad_step = int(str(info.value).split(" at step ")[1].split(";")[0])
    steps = [c.step for c in list_checkpoints(run_dir)]
    assert steps == list(range(1, bad_step + 1))  # every good step saved, nothing after the bad one
    assert f"step-{bad_step:08d}" in str(info.value) or bad_step == 0
    assert not (run_dir / "final").exists()


def test_bf16_autocast_wsd_and_grad_accum(tiny_cfg: Cfg, tmp_path: Path) -> None:
    logged: list[dict] = []
    cfg = tiny_cfg("train.dtype=bfloat16", "schedule.name=wsd", "train.grad_accum=2", "train.max_iters=20")
    summary = run(cfg, tmp_path / "run", on_log=logged.append)
    assert math.isfinite(summary["eval"]["val_loss"])
    lrs = {r["step"]: r["lr"] for r in logged if r["kind"] == "train"}
    assert lrs[10] == pytest.approx(3e-3) and lrs[20] == pytest.approx(1e-4)  # stable, then decayed to min_lr
    assert logged[-1]["tokens_seen"] == 20 * 2 * 4 * 16


def test_dtype_auto_resolves_per_device_and_the_run_dir_records_it(tiny_cfg: Cfg, tmp_path: Path) -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == "float32"  # fp32 is the CPU default
    assert resolve_dtype("bfloat16", torch.device("cpu")) == "bfloat16"  # explicit choices pass through
    run(tiny_cfg("train.dtype=auto", "train.max_iters=10"), tmp_path / "run")
    assert load_run_config(tmp_path / "run").train.dtype == "float32"  # resume reuses the concrete dtype
    straight = run(tiny_cfg("train.max_iters=10"), tmp_path / "fp32")
    a, b = _weights(tmp_path / "run" / "final"), _weights(tmp_path / "fp32" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a) and straight["step"] == 10  # the same run as float32


def test_fp16_grad_scaler_on_cpu_resumes_exactly(tiny_cfg: Cfg, tmp_path: Path) -> None:
    """The fp16 recipe (autocast + grad scaler, meant for CUDA) runs on CPU with a warning; the scaler's state
    is checkpointed, and resuming from the step-10 checkpoint ends with the same weights."""
    cfg = tiny_cfg("train.dtype=float16", "train.fp16_init_scale=1e8", "train.max_iters=20")
    with pytest.warns(
        UserWarning, match=r"train.dtype='float16' on cpu: .* use float32 \(default\) or bfloat16"
    ):
        summary = run(cfg, tmp_path / "a")
    assert math.isfinite(summary["eval"]["val_loss"])
    first = list_checkpoints(tmp_path / "a")[0]
    assert first.step == 10 and first.meta["scaler"]["scale"] < 1e8  # 1e8 overflows fp16: it backed off
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(list_checkpoints(tmp_path / "b")[-1].path)  # as if killed right before the step-20 save
    with pytest.warns(UserWarning):
        run(cfg, tmp_path / "b", resume=True)
    a, b = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_setups(tiny_cfg: Cfg, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.dir is empty"):
        run(tiny_cfg("data.dir="), tmp_path / "b")
    with pytest.raises(
        ValueError, match=r"model.vocab_size=64 is smaller than the data's tokenizer vocabulary \(300\)"
    ):
        run(tiny_cfg("model.vocab_size=64"), tmp_path / "c")
    with pytest.raises(ValueError, match="not found; prepare the data"):
        run(tiny_cfg(f"data.dir={tmp_path}"), tmp_path / "d")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_mixed_precision(tiny_cfg: Cfg, tmp_path: Path, dtype: str) -> None:
    summary = run(
        tiny_cfg("train.device=cuda", f"train.dtype={dtype}", "train.max_iters=20"), tmp_path / "run"
    )
    assert math.isfinite(summary["eval"]["val_loss"])
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    assert ("scale" in ckpt.meta["scaler"]) == (dtype == "float16")  # the grad scaler state is checkpointed
