"""``serve batch``: JSONL requests in, JSONL results out, through the continuous-batching engine; each result
equals the request run alone; bad input lines name their line; the Ray Data path (actor pool, local Ray
with 2 CPUs on 127.0.0.1, shared by the module) gives the same outputs as the in-process path."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
import torch

from nanoforge.cli.main import main
from nanoforge.core_model.checkpoint import save_model
from nanoforge.core_model.config import ModelConfig
from nanoforge.core_model.model import GPT
from nanoforge.inference_server.batch import read_requests, run_batch, to_input
from nanoforge.inference_server.text import ServingModel
from nanoforge.tokenizer import Tokenizer
from nanoforge.tokenizer.chat import CHATML_SPECIALS, chatml_template
from nanoforge.tokenizer.io import save_tokenizer

torch.set_num_threads(1)
TOK = Tokenizer([], special_tokens=CHATML_SPECIALS, chat_template=chatml_template())
REQUESTS = [
    {"id": "p0", "prompt": "hello world", "max_tokens": 6},
    {"prompt": "the quick brown fox", "max_tokens": 9},
    {"id": 7, "messages": [{"role": "user", "content": "hi!"}], "max_tokens": 5},
    {"id": "ids", "prompt_ids": [104, 105, 106], "max_tokens": 4, "stop": ["zz"]},
    {"id": "seeded", "prompt": "sampled", "max_tokens": 5, "temperature": 0.8, "seed": 3},
    {"id": "bad-adapter", "prompt": "x", "adapter": "nope"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch-model")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=260, n_layer=2, n_head=4, d_model=32, max_seq_len=64, positions="rope")
    save_model(GPT(cfg), path)
    save_tokenizer(TOK, path / "tokenizer")
    return path


@pytest.fixture
def requests_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in REQUESTS) + "\n\n", encoding="utf-8")
    return path


def _solo(model_dir) -> list[list[int]]:
    sm = ServingModel.load(model_dir, max_batch_size=1)
    try:
        return [
            asyncio.run(sm.complete(to_input(r, i))).token_ids
            for i, r in enumerate(REQUESTS)
            if r.get("adapter") is None
        ]
    finally:
        asyncio.run(sm.shutdown())


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_batch_results_equal_solo_runs_in_input_order(model_dir, requests_file, tmp_path):
    out = tmp_path / "out" / "results.jsonl"
    summary = run_batch(model_dir, requests_file, out, max_batch_size=4)
    rows = _read(out)
    assert [r["id"] for r in rows] == ["p0", 1, 7, "ids", "seeded", "bad-adapter"]
    assert summary["requests"] == 6 and summary["errors"] == 1
    assert "unknown adapter 'nope'" in rows[-1]["error"]
    assert [r["token_ids"] for r in rows[:-1]] == _solo(model_dir)
    assert rows[0]["completion_tokens"] == len(rows[0]["token_ids"]) <= 6 and rows[0]["prompt_tokens"] == 11
    assert summary["completion_tokens"] == sum(len(r["token_ids"]) for r in rows[:-1])
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # atomic write left nothing


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", ":2: not valid JSON"),
        ('{"prompt": "a", "messages": []}', ":2: give exactly one of ['prompt', 'messages', 'prompt_ids']"),
        ('{"prompt": "a", "max_new": 3}', ":2: unknown fields ['max_new']"),
        ("[1, 2]", ":2: expected a JSON object, got list"),
    ],
)
def test_bad_lines_name_their_line(tmp_path, line, needle):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        read_requests(path)
    assert needle in str(e.value)


def test_cli_serve_batch(model_dir, requests_file, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    code = main(
        ["serve", "batch", "--model", str(model_dir), "--input", str(requests_file), "--output", str(out)]
    )
    err = capsys.readouterr().err
    assert code in (0, None) and "6 requests (1 failed)" in err
    assert [r["token_ids"] for r in _read(out)[:-1]] == _solo(model_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n", encoding="utf-8")
    assert main(["serve", "batch", "--model", str(model_dir), "--input", str(bad), "--output", str(out)]) == 1
    assert "error: " in capsys.readouterr().err
    assert main(["serve", "--port", "0"]) == 1
    assert "missing option --model" in capsys.readouterr().err


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray per test session, reused when another package's tests already started it.

    It is not shut down here: Ray stops itself at interpreter exit, and stopping and restarting a local
    Ray inside one process is flaky (the second start can time out registering its node).
    """
    ray = pytest.importorskip("ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    return ray


@pytest.mark.ray
def test_ray_batch_matches_in_process(local_ray, model_dir, requests_file, tmp_path):
    from nanoforge.inference_server.ray_batch import generate_with_ray

    local = tmp_path / "local.jsonl"
    run_batch(model_dir, requests_file, local, max_batch_size=4)
    out = tmp_path / "ray.jsonl"
    summary = run_batch(model_dir, requests_file, out, use_ray=True, num_actors=2, max_batch_size=4)
    assert summary["requests"] == 6
    assert _read(out) == _read(local)
    small = generate_with_ray(model_dir, read_requests(requests_file), num_actors=2, batch_size=2, load={})
    assert small == _read(local)  # 3 batches over 2 actors, each with its own engine
    with pytest.raises(ValueError, match="num_actors=0"):
        generate_with_ray(model_dir, REQUESTS, num_actors=0)
