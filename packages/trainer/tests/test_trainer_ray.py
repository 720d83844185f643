"""Ray Train: 2 CPU workers (DDP over gloo) give the same losses as one process on the same global batch,
and a worker killed mid-run is replaced and the run resumes from the last checkpoint.

One local Ray (num_cpus=2, no dashboard, 127.0.0.1) is shared by the whole module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray per test session, reused when another package's tests already started it.

    It is not shut down here: Ray stops itself at interpreter exit, and stopping and restarting a local
    Ray inside one process is flaky (the second start can time out registering its node).
    """
    os.environ["RAY_AUTH_MODE"] = "disabled"  # no token file in the home directory
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)


def _losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


def test_ray_pretrain_two_workers_match_one_process(local_ray, tmp_path: Path, tiny_cfg) -> None:
    from nanoforge.trainer.pretrain import run
    from nanoforge.trainer.ray_launcher import run_ray

    cfg = tiny_cfg(
        "train.max_iters=6", "train.log_interval=1", "train.eval_interval=6", "checkpoint.interval=3"
    )
    single = run(cfg, tmp_path / "one")
    out = run_ray("pretrain", cfg, tmp_path / "ray", num_workers=2)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "ray")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), (step, one, two)
    assert one[6] < one[1]  # it trained
    assert out["step"] == 6 and out["eval"]["val_loss"] == pytest.approx(single["eval"]["val_loss"], rel=1e-3)
    assert (tmp_path / "ray" / "final" / "model.safetensors").is_file()
    assert [p.name for p in sorted((tmp_path / "ray" / "checkpoints").iterdir())] == [
        "step-00000003",
        "step-00000006",
    ]


@pytest.mark.slow  # two Ray Train attempts: about a minute more
def test_ray_lora_survives_a_killed_worker(local_ray, tmp_path: Path, ft_overrides: list[str]) -> None:
    from nanoforge.trainer.finetune import run
    from nanoforge.trainer.finetune_config import load_finetune_config
    from nanoforge.trainer.ray_launcher import run_ray

    cfg = load_finetune_config(
        None,
        [*ft_overrides, "lora.impl=nanoforge", "train.max_iters=12", "checkpoint.interval=6"],
        method="lora",
    )
    run(cfg, tmp_path / "one")
    out = run_ray("finetune", cfg, tmp_path / "ray", num_workers=2, max_failures=1, fail_at_step=6)
    assert out["ray_failures_injected"] == 1 and out["step"] == 12
    assert "killed after step 6" in (tmp_path / "ray" / ".ray-fault-injected").read_text()
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "ray")
    assert sorted(two) == sorted(one)  # the resumed run's log continues where the checkpoint was
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-5), (step, one, two)
    a = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "ray" / "adapter" / "adapter_model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k


def test_ray_rejects_uneven_batch(tmp_path: Path, tiny_cfg) -> None:
    from nanoforge.trainer.ray_launcher import run_ray

    with pytest.raises(ValueError, match=r"train.batch_size=4 must be divisible by --num-workers=3"):
        run_ray("pretrain", tiny_cfg(), tmp_path, num_workers=3)


def test_ray_cli_flags_reach_the_launcher(tmp_path: Path, ft_overrides: list[str], monkeypatch) -> None:
    from click.testing import CliRunner

    from nanoforge.trainer import ray_launcher
    from nanoforge.trainer.cli import group

    calls = []

    def fake_run_ray(recipe, cfg, out, **kw):
        calls.append((recipe, cfg.base.method, out, kw))
        return {
            "step": 1,
            "eval": {"val_loss": 1.0, "train_loss": 1.0},
            "trainable_params": 1,
            "total_params": 2,
            "tokens_per_s": 1.0,
            "wall_s": 1.0,
            "adapter": str(out / "adapter"),
        }

    monkeypatch.setattr(ray_launcher, "run_ray", fake_run_ray)
    args = ["lora", "--ray", "--num-workers", "4", "--ray-address", "ray://head:10001", "--max-failures", "3"]
    r = CliRunner().invoke(group, [*args, "--out", str(tmp_path / "r"), *ft_overrides])
    assert r.exit_code == 0, r.output
    (recipe, method, out, kw) = calls[0]
    assert (recipe, method, out) == ("finetune", "lora", tmp_path / "r")
    assert kw == {"resume": False, "num_workers": 4, "address": "ray://head:10001", "max_failures": 3}


def test_prepare_on_ray_data_writes_the_same_bytes(
    local_ray, tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path
) -> None:
    from nanoforge.trainer.prepare import prepare
    from nanoforge.trainer.ray_launcher import prepare_ray

    # small blocks: the six files become many parts, spread over two encoding actors
    kw = {"val_fraction": 0.2, "doc_split": "paragraph", "block_bytes": 2000}
    local = prepare([corpus_dir], tokenizer_dir, tmp_path / "local", **kw)
    seen: list[tuple[int, int]] = []
    on_ray = prepare_ray(
        [corpus_dir],
        tokenizer_dir,
        tmp_path / "ray",
        num_workers=2,
        on_part=lambda d, t: seen.append((d, t)),
        **kw,
    )
    assert seen[-1][0] == seen[-1][1] > 12  # every block went through Ray
    assert on_ray == local == json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert local["splits"]["val"]["tokens"] > 0 and local["splits"]["train"]["tokens"] > 0
    for name in ("train.bin", "val.bin", "tokenizer/tokenizer.json"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert not (tmp_path / "ray" / "parts").exists()

    bad = tmp_path / "bad.jsonl"  # bad input in a Ray task: the same one-line ValueError as the local path
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2: not valid JSON"):
        prepare_ray([bad], tokenizer_dir, tmp_path / "bad-out", doc_split="jsonl", num_workers=1)


def test_prepare_ray_flags_reach_prepare_ray(tmp_path: Path, corpus_dir: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from nanoforge.trainer import ray_launcher
    from nanoforge.trainer.cli import group

    calls = []

    def fake_prepare_ray(inputs, tokenizer, out, **kw):
        calls.append((inputs, tokenizer, out, {k: v for k, v in kw.items() if k != "on_part"}))
        split = {"tokens": 10, "documents": 1, "bytes_per_token": 1.0}
        return {"splits": {"train": split, "val": split}, "dtype": "uint16"}

    monkeypatch.setattr(ray_launcher, "prepare_ray", fake_prepare_ray)
    args = ["prepare", "--input", str(corpus_dir), "--tokenizer", "byte", "--out", str(tmp_path / "d")]
    r = CliRunner().invoke(group, [*args, "--ray", "--workers", "3", "--ray-address", "auto"])
    assert r.exit_code == 0, r.output
    assert calls == [
        (
            [str(corpus_dir)],
            "byte",
            tmp_path / "d",
            {"num_workers": 3, "address": "auto", "val_fraction": 0.1, "doc_split": "file"},
        )
    ]
    r = CliRunner().invoke(group, [*args, "--ray-address", "auto"])
    assert r.exit_code != 0 and "--ray-address=auto needs --ray" in r.output
