"""``nanoforge serve`` as a real subprocess (port 0, graceful SIGTERM drain) and its input errors."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from nanoforge.api.common.v1 import common_pb2
from nanoforge.api.inference_client import InferenceClient
from nanoforge.cli.main import main


def _start(model_dir, *extra: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    cmd = [
        sys.executable,
        "-m",
        "nanoforge.cli",
        "serve",
        "--model",
        str(model_dir),
        "--port",
        "0",
        "--http-port",
        "0",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*cmd, *extra], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def _ports(lines: queue.Queue[str], timeout: float = 90) -> tuple[dict[str, int], list[str]]:
    seen: list[str] = []
    ports: dict[str, int] = {}
    end = time.monotonic() + timeout
    while len(ports) < 2 and time.monotonic() < end:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        match = re.match(r"(grpc|http) listening on 127\.0\.0\.1:(\d+)", line)
        if match:
            ports[match.group(1)] = int(match.group(2))
    return ports, seen


def test_serve_prints_ports_and_drains_on_sigterm(slow_model_dir):
    proc, lines = _start(slow_model_dir, "--max-batch-size", "2", "--grace", "30", "--name", "tiny")
    try:
        ports, seen = _ports(lines)
        assert set(ports) == {"grpc", "http"}, "".join(seen)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/health", timeout=10) as response:
            assert response.status == 200
        body = {"prompt": "A tiny model", "max_tokens": 300, "temperature": 0, "stream": True}
        request = urllib.request.Request(
            f"http://127.0.0.1:{ports['http']}/v1/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with (
            InferenceClient(f"127.0.0.1:{ports['grpc']}", timeout=60) as client,
            urllib.request.urlopen(request, timeout=60) as sse,
        ):
            first_event = sse.readline()
            stream = client.generate_stream("Once upon a time", max_new_tokens=300, temperature=0.0)
            chunks = [next(stream)]
            proc.send_signal(signal.SIGTERM)  # drain while both streams are running
            chunks += list(stream)
            events = (first_event + sse.read()).decode().split("\n\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    last = chunks[-1]
    assert last.finish_reason in (common_pb2.FINISH_REASON_LENGTH, common_pb2.FINISH_REASON_STOP)
    assert last.HasField("usage") and last.usage.completion_tokens >= sum(len(c.token_ids) for c in chunks)
    assert events[-2:] == ["data: [DONE]", ""]
    assert json.loads(events[-3][6:])["choices"][0]["finish_reason"] in ("length", "stop")
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    log = "".join(seen + rest)
    assert "draining" in log and "stopped" in log and "Traceback" not in log


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--quantize", "int3"], "quantize='int3' is not supported"),
        (["--adapter", "no-equals-sign"], "bad --adapter 'no-equals-sign'; expected NAME=DIR"),
        (["--adapter", "x=/some/dir"], "cannot load adapter 'x' from '/some/dir'"),
    ],
)
def test_serve_input_errors_are_one_line(tiny_model_dir, capsys, extra, needle):
    code = main(["serve", "--model", str(tiny_model_dir), "--port", "0", "--no-http", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("error: ") and needle in err and "\n" not in err


def test_serve_rejects_half_tls_and_empty_token_file(tiny_model_dir, tmp_path, capsys):
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    assert main(["serve", "--model", str(tiny_model_dir), "--tls-cert", str(cert)]) == 1
    assert "give both --tls-cert and --tls-key" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("  \n")
    assert main(["serve", "--model", str(tiny_model_dir), "--auth-token-file", str(token)]) == 1
    assert "must hold one token" in capsys.readouterr().err
