"""``nanoforge serve``: the gRPC InferenceService and the OpenAI-compatible HTTP API in one process.

Both servers run in ONE asyncio loop over the SAME ``ServingModel`` (so they share its batch, its KV
memory and its metrics). SIGTERM or SIGINT drains: health turns NOT_SERVING, new calls are refused,
in-flight calls and streams finish (up to ``--grace`` seconds), then the engine stops and the process exits 0.
With ``--port 0`` / ``--http-port 0`` the bound ports are printed (``grpc listening on 127.0.0.1:PORT``,
``http listening on 127.0.0.1:PORT``) so scripts and tests can read them.

What it deliberately does not do: daemonize, reload on change, or serve several models per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nanoforge.api import server as srv
from nanoforge.cli import UserError
from nanoforge.inference_server.batch_cli import batch_command
from nanoforge.inference_server.convert import Limits
from nanoforge.inference_server.grpc_server import SERVICE_NAME, build_grpc_server
from nanoforge.inference_server.http_server import HttpServer, OpenAIApp
from nanoforge.inference_server.metrics import ServerMetrics

if TYPE_CHECKING:
    import grpc.aio
    from grpc_health.v1._async import HealthServicer

    from nanoforge.inference_server.text import ServingModel

_log = logging.getLogger("nanoforge.inference_server")


@dataclass
class ServeOptions:
    """Network and safety settings of one ``serve`` process (everything except how the model loads)."""

    host: str = "127.0.0.1"
    port: int = 50051
    http_port: int | None = 8000  # None: no HTTP server
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_bytes: int = 16 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)


@dataclass
class Servers:
    """The running servers of one process; ``stop`` drains them and shuts the model down."""

    model: ServingModel
    grpc: grpc.aio.Server
    health: HealthServicer
    grpc_port: int
    http: HttpServer | None
    http_port: int | None
    metrics: ServerMetrics

    async def stop(self, grace: float = 30.0) -> None:
        """Drain both servers concurrently (in-flight work gets ``grace`` seconds), then stop the engine."""
        tasks = [srv.graceful_stop(self.grpc, self.health, grace)]
        if self.http is not None:
            tasks.append(self.http.stop(grace))
        await asyncio.gather(*tasks)
        await self.model.shutdown(drain=True, timeout=grace)


def read_token_file(path: str) -> str:
    """The bearer token in ``path`` (surrounding whitespace stripped).

    Raises:
        ValueError: if the file is empty or the token contains whitespace.
    """
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"auth token file {path!r} must hold one token without whitespace")
    return token


async def start_servers(model: ServingModel, options: ServeOptions) -> Servers:
    """Start gRPC (and HTTP unless ``http_port`` is None) over ``model``; returns once both accept calls."""
    if (options.tls_cert is None) != (options.tls_key is None):
        raise ValueError("give both --tls-cert and --tls-key, or neither")
    credentials = (
        srv.server_credentials(options.tls_cert, options.tls_key)
        if options.tls_cert and options.tls_key
        else None
    )
    metrics = ServerMetrics(model.metrics)
    server, health, grpc_port = build_grpc_server(
        model,
        host=options.host,
        port=options.port,
        token=options.token,
        credentials=credentials,
        metrics=metrics,
        limits=options.limits,
        max_message_bytes=options.max_message_bytes,
    )
    await server.start()
    await srv.mark_serving(health, [SERVICE_NAME])
    http, http_port = None, None
    if options.http_port is not None:
        app = OpenAIApp(model, token=options.token, metrics=metrics, limits=options.limits)
        http = HttpServer(
            app,
            host=options.host,
            port=options.http_port,
            ssl_certfile=options.tls_cert,
            ssl_keyfile=options.tls_key,
        )
        try:
            http_port = await http.start()
        except BaseException:
            await server.stop(0)
            raise
    return Servers(model, server, health, grpc_port, http, http_port, metrics)


async def _serve(load: Any, options: ServeOptions, grace: float) -> None:
    model = load()
    try:
        servers = await start_servers(model, options)
    except BaseException:
        await model.shutdown(drain=False, timeout=5)
        raise
    click.echo(f"grpc listening on {options.host}:{servers.grpc_port}", err=True)
    if servers.http_port is not None:
        click.echo(f"http listening on {options.host}:{servers.http_port}", err=True)
    click.echo(f"serving model {model.name!r}; SIGTERM or Ctrl+C drains and stops", err=True)
    await srv.wait_for_stop_signal()
    click.echo(f"draining (grace {grace:g} s)...", err=True)
    await servers.stop(grace)
    click.echo("stopped", err=True)


def _parse_adapters(values: tuple[str, ...]) -> dict[str, str | Path] | None:
    out: dict[str, str | Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserError(f"bad --adapter {value!r}; expected NAME=DIR")
        out[name] = path
    return out or None


@click.group("serve", invoke_without_command=True)
@click.pass_context
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Model dir (ours, or a HF Llama/Mistral/Qwen2/GPT-2 dir with its tokenizer).",
)
@click.option("--name", default=None, help="Served model name. Default: the directory name.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface for both servers.")
@click.option(
    "--port",
    default=50051,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="gRPC port (0: any free port).",
)
@click.option(
    "--http-port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="OpenAI HTTP port (0: any).",
)
@click.option("--no-http", is_flag=True, help="Serve gRPC only.")
@click.option(
    "--max-batch-size",
    default=8,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Sequences decoded together.",
)
@click.option(
    "--max-seq-len", default=None, type=click.IntRange(1), help="Context length cap. Default: the model's."
)
@click.option(
    "--max-queue",
    default=64,
    show_default=True,
    type=click.IntRange(1),
    help="Waiting requests before RESOURCE_EXHAUSTED.",
)
@click.option("--kv-budget-tokens", default=None, type=click.IntRange(1), help="KV-cache budget in tokens.")
@click.option("--quantize", default=None, help="Weight quantization (e.g. int8), if the engine supports it.")
@click.option(
    "--adapter", "adapters", multiple=True, metavar="NAME=DIR", help="LoRA adapter to load (repeatable)."
)
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu or cuda:0.")
@click.option(
    "--auth-token-file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="File with the bearer token clients must send.",
)
@click.option(
    "--tls-cert",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM certificate (TLS on both servers).",
)
@click.option(
    "--tls-key",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="PEM private key for --tls-cert.",
)
@click.option(
    "--max-message-mb",
    default=16,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Largest gRPC message.",
)
@click.option(
    "--max-new-tokens-limit",
    default=8192,
    show_default=True,
    type=click.IntRange(1),
    help="Most tokens one request may ask for.",
)
@click.option(
    "--grace",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds in-flight calls get on shutdown.",
)
def serve(
    ctx: click.Context,
    model_dir: str | None,
    name: str | None,
    host: str,
    port: int,
    http_port: int,
    no_http: bool,
    max_batch_size: int,
    max_seq_len: int | None,
    max_queue: int,
    kv_budget_tokens: int | None,
    quantize: str | None,
    adapters: tuple[str, ...],
    device: str,
    auth_token_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    max_message_mb: int,
    max_new_tokens_limit: int,
    grace: float,
) -> None:
    """Serve a model over gRPC (InferenceService) and an OpenAI-compatible HTTP API in one process.

    `nanoforge serve batch ...` runs offline batched generation instead (see `serve batch --help`).
    """
    if ctx.invoked_subcommand is not None:
        return
    if model_dir is None:
        raise UserError("missing option --model DIR (the model directory to serve)")
    from nanoforge.inference_server.errors import InferenceError
    from nanoforge.inference_server.text import ServingModel

    if (tls_cert is None) != (tls_key is None):
        raise UserError("give both --tls-cert and --tls-key, or neither")
    options = ServeOptions(
        host=host,
        port=port,
        http_port=None if no_http else http_port,
        token=read_token_file(auth_token_file) if auth_token_file else None,
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_message_bytes=max_message_mb * 1024 * 1024,
        limits=Limits(max_new_tokens=max_new_tokens_limit),
    )
    adapter_map = _parse_adapters(adapters)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )

    def load() -> ServingModel:
        return ServingModel.load(
            model_dir,
            name=name,
            max_batch_size=max_batch_size,
            max_seq_len=max_seq_len,
            kv_budget_tokens=kv_budget_tokens,
            max_queue=max_queue,
            quantize=quantize,
            adapters=adapter_map,
            device=device,
        )

    try:
        asyncio.run(_serve(load, options, grace))
    except InferenceError as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:  # a second Ctrl+C during the drain
        with contextlib.suppress(Exception):
            click.echo("interrupted", err=True)


serve.add_command(batch_command)

#: The entry point named in pyproject (``nanoforge.cli`` group ``serve``).
group = serve
