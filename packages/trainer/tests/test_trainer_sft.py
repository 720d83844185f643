"""SFT: records -> messages, packing keeps the assistant-only mask, the full fine-tuning run, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nanoforge.core_model.checkpoint import load_model
from nanoforge.tokenizer.chat import render_chat
from nanoforge.trainer.checkpoint import list_checkpoints
from nanoforge.trainer.finetune import run
from nanoforge.trainer.finetune_config import load_finetune_config
from nanoforge.trainer.sft_data import IGNORE_INDEX, pack, read_jsonl, record_to_messages, render_all


def test_sft_instruction_record_becomes_messages() -> None:
    msgs = record_to_messages({"instruction": "Add", "input": "2+2", "output": "4", "system": "math"}, "x")
    assert msgs == [
        {"role": "system", "content": "math"},
        {"role": "user", "content": "Add\n\n2+2"},
        {"role": "assistant", "content": "4"},
    ]
    assert record_to_messages({"instruction": "Hi", "output": "Yo"}, "x")[0] == {
        "role": "user",
        "content": "Hi",
    }


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"prompt": "a"}, "unknown record with keys ['prompt']"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "user", "content": "a"}]}, "no assistant message"),
        ({"instruction": 3, "output": "a"}, "['instruction'] must be strings"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_sft_bad_records_are_named(record: object, needle: str) -> None:
    with pytest.raises(ValueError, match="rec:7") as e:
        record_to_messages(record, "rec:7")
    assert needle in str(e.value)


def test_sft_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: invalid JSON"):
        read_jsonl(p)


@pytest.mark.parametrize("block_size", [7, 16, 32])
def test_sft_packing_loss_tokens_are_exactly_the_assistant_tokens(
    sft_jsonl: Path, chat_tokenizer, block_size: int
) -> None:
    convs = read_jsonl(sft_jsonl)[:9]
    chats = render_all(chat_tokenizer, convs)
    sep = chat_tokenizer.special_tokens["<|endoftext|>"]
    packed = pack(chats, block_size, sep)
    # rebuild the stream and the set of assistant positions independently of pack()
    stream, assistant = [], set()
    for chat in chats:
        for tok_id, m in zip(chat.ids, chat.loss_mask, strict=True):
            if m:
                assistant.add(len(stream))
            stream.append(tok_id)
        stream.append(sep)
    n, t = packed.x.shape
    assert n > 1  # several conversations per block, and conversations spanning blocks
    targets = {}
    for i in range(n):
        for j in range(t):
            pos = i * t + j + 1  # the stream position y[i, j] predicts
            assert packed.x[i, j].item() == (stream[pos - 1] if pos - 1 < len(stream) else 0)
            if packed.y[i, j].item() != IGNORE_INDEX:
                targets[pos] = packed.y[i, j].item()
    assert set(targets) == assistant
    assert all(targets[p] == stream[p] for p in assistant)
    # and those are the assistant replies' text (plus their end-of-turn tokens), nothing from user/system
    text = chat_tokenizer.decode([stream[p] for p in sorted(assistant)])
    assert "jumps over the lazy dog" in text and "which word" not in text and "quick brown" not in text
    assert packed.loss_tokens == sum(sum(c.loss_mask) for c in chats)


def test_sft_render_marks_only_assistant(chat_tokenizer) -> None:
    r = render_chat(
        chat_tokenizer, [{"role": "user", "content": "hum"}, {"role": "assistant", "content": "jazz"}]
    )
    assert (
        chat_tokenizer.decode([i for i, m in zip(r.ids, r.loss_mask, strict=True) if m]) == "jazz<|im_end|>"
    )


def test_sft_full_run_learns_and_exports(tmp_path: Path, ft_overrides: list[str]) -> None:
    logs: list[dict] = []
    cfg = load_finetune_config(None, [*ft_overrides, "train.max_iters=30"], method="full")
    summary = run(cfg, tmp_path / "run", on_log=logs.append)
    evals = [r for r in logs if r["kind"] == "eval"]
    assert evals[-1]["train_loss"] < evals[0]["train_loss"] - 1.0, evals
    assert "val_loss" in evals[-1]
    assert summary["trainable_params"] == summary["total_params"]
    model = load_model(tmp_path / "run" / "final")
    assert model.config.vocab_size == 320
    assert (tmp_path / "run" / "final" / "tokenizer" / "tokenizer.json").is_file()


def test_sft_lora_resume_is_exact(tmp_path: Path, ft_overrides: list[str]) -> None:
    over = [*ft_overrides, "lora.impl=nanoforge", "lora.dropout=0.1"]
    full = run(load_finetune_config(None, over, method="lora"), tmp_path / "a")
    # a run stopped after its step-10 checkpoint, then resumed with the same config
    half = load_finetune_config(None, [*over, "train.max_iters=10", "schedule.decay_iters=20"], method="lora")
    run(half, tmp_path / "b")
    run(load_finetune_config(None, over, method="lora"), tmp_path / "b", resume=True)
    a = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter" / "adapter_model.safetensors"))
    # q_proj and v_proj, A and B, 2 layers + the special-token rows (lora.trainable_tokens=special, tied head)
    assert a.keys() == b.keys() and len(a) == 9
    assert "base_model.model.tok_emb.token_adapter.trainable_tokens_delta" in a
    assert all(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # B starts at 0: training moved it
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full["trainable_params"] < full["total_params"] / 10


def test_sft_fp16_grad_scaler_state_resumes_exactly(tmp_path: Path, ft_overrides: list[str]) -> None:
    """fp16 autocast + grad scaler (the CUDA recipe, run on CPU): the scaler's state is checkpointed and
    restored, so a resumed run ends with the same adapter as an uninterrupted one."""
    over = [*ft_overrides, "lora.impl=nanoforge", "train.dtype=float16", "train.fp16_init_scale=1e8"]
    with pytest.warns(
        UserWarning, match=r"train.dtype='float16' on cpu: .* use float32 \(default\) or bfloat16"
    ):
        run(load_finetune_config(None, over, method="lora"), tmp_path / "a")
    ckpts = list_checkpoints(tmp_path / "a")
    scaler = ckpts[0].meta["scaler"]
    # 1e8 overflows fp16 gradients, so the scaler skipped steps and backed off: its state is not the initial
    # one, and a resume that forgot it would skip steps again and end elsewhere
    assert scaler["scale"] < 1e8 and ckpts[0].step == 10, scaler
    half = load_finetune_config(None, [*over, "train.max_iters=10", "schedule.decay_iters=20"], method="lora")
    with pytest.warns(UserWarning):
        run(half, tmp_path / "b")
        run(load_finetune_config(None, over, method="lora"), tmp_path / "b", resume=True)
    a = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # the scaled steps did update
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sft_bad_config_is_named(ft_overrides: list[str]) -> None:
    with pytest.raises(ValueError, match=r"lora.impl='hf' is not supported; accepted: peft, nanoforge"):
        load_finetune_config(None, [*ft_overrides, "lora.impl=hf"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lora.rank'\]"):
        load_finetune_config(None, [*ft_overrides, "lora.rank=3"])


def test_sft_tokenizer_too_big_for_model(
    tmp_path: Path, ft_overrides: list[str], base_model_dir: Path
) -> None:
    from nanoforge.core_model.checkpoint import save_model
    from nanoforge.core_model.config import ModelConfig
    from nanoforge.core_model.model import build_model

    small = tmp_path / "small"
    save_model(
        build_model(
            ModelConfig.from_dict(
                {"vocab_size": 256, "n_layer": 1, "n_head": 2, "d_model": 16, "max_seq_len": 32}
            )
        ),
        small,
    )
    over = [*ft_overrides, f"base.model={small}", f"data.tokenizer={base_model_dir / 'tokenizer'}"]
    with pytest.raises(ValueError, match="vocab_size is 256"):
        run(load_finetune_config(None, over, method="full"), tmp_path / "r")


def test_sft_cli(tmp_path: Path, ft_overrides: list[str]) -> None:
    from click.testing import CliRunner

    from nanoforge.trainer.cli import group

    res = CliRunner().invoke(group, ["sft", "--out", str(tmp_path / "r"), *ft_overrides, "train.max_iters=4"])
    assert res.exit_code == 0, res.output
    assert "step 4: val loss" in res.output
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["kind"] == "done"
