"""Offline batched inference: a JSONL file of requests in, a JSONL file of results out, through the engine.

What it does: ``read_requests`` parses and checks every line first (a bad line stops the run with its line
number); ``generate_records`` submits all requests to one ``ServingModel`` concurrently (a bounded number in
flight), so the engine batches them continuously, and returns one result per request in input order;
``run_batch`` loads the model, runs that and writes the output atomically. ``ray_batch`` spreads the same
work over Ray actors.

Input line (JSON object): exactly one of ``prompt`` (str), ``messages`` (chat list) or ``prompt_ids``
(list of ints), plus optional ``id``, ``adapter``, ``max_tokens``, ``temperature``, ``top_p``, ``top_k``,
``min_p``, ``repetition_penalty``, ``seed``, ``stop``. Output line: ``id``, ``text``, ``token_ids``,
``finish_reason``, ``prompt_tokens``, ``completion_tokens``, or ``id`` and ``error`` when that request
failed (e.g. unknown adapter); one failing request does not stop the others.
What it does not do: streaming, servers, or Ray itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nanoforge.core_model.checkpoint import atomic_write_bytes
from nanoforge.inference_server.errors import InferenceError
from nanoforge.inference_server.text import ServingModel
from nanoforge.inference_server.types import GenerateInput, SamplingOptions

#: JSON field -> SamplingOptions field.
OPTION_FIELDS = {
    "max_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
    "stop": "stop",
}
INPUT_FIELDS = ("prompt", "messages", "prompt_ids")
KNOWN_FIELDS = {"id", "adapter", *INPUT_FIELDS, *OPTION_FIELDS}


def check_record(obj: Any, where: str) -> dict[str, Any]:
    """Check one request object; returns it. Raises ValueError naming ``where`` and the problem."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - KNOWN_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}; accepted: {sorted(KNOWN_FIELDS)}")
    given = [k for k in INPUT_FIELDS if obj.get(k) is not None]
    if len(given) != 1:
        raise ValueError(f"{where}: give exactly one of {list(INPUT_FIELDS)}, got {given or 'none'}")
    return obj


def read_requests(path: str | Path) -> list[dict[str, Any]]:
    """Parse and check a JSONL request file (blank lines skipped). Raises OSError / ValueError."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            records.append(check_record(obj, f"{path}:{n}"))
    return records


def to_input(record: dict[str, Any], index: int) -> GenerateInput:
    """A checked record -> ``GenerateInput`` (greedy with 64 new tokens unless the record says otherwise)."""
    opts: dict[str, Any] = {"temperature": 0.0, "max_new_tokens": 64}
    opts.update({OPTION_FIELDS[k]: v for k, v in record.items() if k in OPTION_FIELDS})
    return GenerateInput(
        prompt=record.get("prompt"),
        messages=record.get("messages"),
        prompt_ids=record.get("prompt_ids"),
        adapter=record.get("adapter"),
        options=SamplingOptions(**opts),
        request_id=str(record.get("id", index)),
    )


async def _one(
    sm: ServingModel, record: dict[str, Any], index: int, gate: asyncio.Semaphore
) -> dict[str, Any]:
    rid = record.get("id", index)
    async with gate:
        try:
            out = await sm.complete(to_input(record, index))
        except (InferenceError, ValueError, TypeError) as e:
            return {"id": rid, "error": f"{type(e).__name__}: {e}"}
    usage = out.usage
    return {
        "id": rid,
        "text": out.text,
        "token_ids": out.token_ids,
        "finish_reason": out.finish_reason,
        "prompt_tokens": usage.prompt_tokens if usage else 0,
        "completion_tokens": usage.completion_tokens if usage else len(out.token_ids),
    }


async def generate_records_async(
    sm: ServingModel, records: list[dict[str, Any]], start_index: int = 0
) -> list[dict[str, Any]]:
    """Run ``records`` concurrently through ``sm`` (at most the engine's queue size in flight)."""
    gate = asyncio.Semaphore(max(1, min(sm.engine.config.max_queue, 4 * sm.engine.table.capacity)))
    return list(await asyncio.gather(*(_one(sm, r, start_index + i, gate) for i, r in enumerate(records))))


def generate_records(
    sm: ServingModel, records: list[dict[str, Any]], start_index: int = 0
) -> list[dict[str, Any]]:
    """Blocking form of ``generate_records_async`` (runs its own event loop)."""
    return asyncio.run(generate_records_async(sm, records, start_index))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` as JSONL atomically (core-model's temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(
        path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    )


def run_batch(
    model_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    *,
    use_ray: bool = False,
    num_actors: int = 1,
    **load: Any,
) -> dict[str, float]:
    """Read requests, generate (in-process, or on ``num_actors`` Ray actors), write results.

    ``load`` goes to ``ServingModel.load`` (max_batch_size, quantize, adapters, ...).

    Returns:
        ``{"requests", "errors", "completion_tokens", "seconds", "tokens_per_s"}``.
    """
    records = read_requests(input_path)
    t0 = time.perf_counter()
    if use_ray:
        from nanoforge.inference_server.ray_batch import generate_with_ray

        results = generate_with_ray(model_dir, records, num_actors=num_actors, load=load)
    else:
        sm = ServingModel.load(model_dir, **load)
        try:
            results = generate_records(sm, records)
        finally:
            sm.engine.shutdown(drain=False)
    seconds = time.perf_counter() - t0
    write_jsonl(output_path, results)
    tokens = sum(int(r.get("completion_tokens", 0)) for r in results)
    return {
        "requests": len(results),
        "errors": sum(1 for r in results if "error" in r),
        "completion_tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
    }


__all__ = ["check_record", "generate_records", "read_requests", "run_batch", "to_input", "write_jsonl"]
