"""The generated contract: every module imports, buf STANDARD naming holds, every reply carries a Usage."""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import ModuleType

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

DOMAINS = ("common", "inference", "retriever", "recommender", "trainer")

#: The RPCs each service must offer (DESIGN.md "Services"), in declaration order.
EXPECTED_RPCS = {
    "nanoforge.api.inference.v1.InferenceService": [
        "Generate",
        "GenerateStream",
        "Score",
        "Embed",
        "Tokenize",
        "Detokenize",
        "ListModels",
        "LoadAdapter",
        "UnloadAdapter",
    ],
    "nanoforge.api.retriever.v1.RetrieverService": [
        "CreateCollection",
        "ListCollections",
        "DeleteCollection",
        "Upsert",
        "Delete",
        "Search",
        "Ask",
        "AskStream",
        "Stats",
    ],
    "nanoforge.api.recommender.v1.RecommenderService": [
        "Recommend",
        "PredictConversion",
        "ScoreCandidates",
        "Explain",
    ],
    "nanoforge.api.trainer.v1.TrainerService": [
        "SubmitJob",
        "GetJob",
        "ListJobs",
        "WatchJob",
        "CancelJob",
        "ListCheckpoints",
    ],
}

SERVER_STREAMING = {"GenerateStream", "AskStream", "WatchJob"}


def _modules(domain: str) -> tuple[ModuleType, ModuleType]:
    base = f"nanoforge.api.{domain}.v1.{domain}"
    return importlib.import_module(f"{base}_pb2"), importlib.import_module(f"{base}_pb2_grpc")


def _file(domain: str) -> FileDescriptor:
    return _modules(domain)[0].DESCRIPTOR


def _all_messages(fd: FileDescriptor) -> list[Descriptor]:
    out: list[Descriptor] = []
    todo = list(fd.message_types_by_name.values())
    while todo:
        msg = todo.pop()
        out.append(msg)
        todo.extend(msg.nested_types)
    return out


@pytest.mark.parametrize("domain", DOMAINS)
def test_api_package_matches_directory(domain: str) -> None:
    fd = _file(domain)
    assert fd.package == f"nanoforge.api.{domain}.v1"
    assert fd.name == f"nanoforge/api/{domain}/v1/{domain}.proto"


@pytest.mark.parametrize("domain", DOMAINS)
def test_api_every_message_class_is_exported(domain: str) -> None:
    pb2, _ = _modules(domain)
    for name, desc in _file(domain).message_types_by_name.items():
        cls = getattr(pb2, name)
        assert cls.DESCRIPTOR is desc
        assert isinstance(cls(), cls)  # constructible with no arguments


def test_api_services_have_expected_rpcs_and_generated_classes() -> None:
    found = {}
    for domain in DOMAINS:
        _, pb2_grpc = _modules(domain)
        for name, svc in _file(domain).services_by_name.items():
            found[svc.full_name] = [m.name for m in svc.methods]
            assert name.endswith("Service")
            for suffix in ("Stub", "Servicer"):
                assert hasattr(pb2_grpc, name + suffix), f"{name}{suffix} missing"
            assert callable(getattr(pb2_grpc, f"add_{name}Servicer_to_server"))
    assert found == EXPECTED_RPCS


def test_api_stub_exposes_every_rpc_on_a_channel() -> None:
    channel = grpc.insecure_channel("127.0.0.1:1")  # never connected: stubs are built lazily
    try:
        for full_name, rpcs in EXPECTED_RPCS.items():
            domain = full_name.split(".")[2]
            _, pb2_grpc = _modules(domain)
            stub = getattr(pb2_grpc, full_name.rsplit(".", 1)[1] + "Stub")(channel)
            for rpc in rpcs:
                assert callable(getattr(stub, rpc))
    finally:
        channel.close()


@pytest.mark.parametrize("domain", [d for d in DOMAINS if d != "common"])
def test_api_rpcs_follow_buf_standard_names_and_streaming(domain: str) -> None:
    for svc in _file(domain).services_by_name.values():
        for method in svc.methods:
            assert method.input_type.name == f"{method.name}Request"
            assert method.output_type.name == f"{method.name}Response"
            assert method.input_type.file is method.containing_service.file
            assert not method.client_streaming
            assert method.server_streaming == (method.name in SERVER_STREAMING)


@pytest.mark.parametrize("domain", DOMAINS)
def test_api_enum_zero_values_are_unspecified_and_prefixed(domain: str) -> None:
    fd = _file(domain)
    enums = list(fd.enum_types_by_name.values())
    for msg in _all_messages(fd):
        enums.extend(msg.enum_types)
    for enum in enums:
        prefix = "".join("_" + c if c.isupper() else c.upper() for c in enum.name).lstrip("_")
        assert enum.values_by_number[0].name == f"{prefix}_UNSPECIFIED"
        for value in enum.values:
            assert value.name.startswith(prefix + "_"), value.name


@pytest.mark.parametrize("domain", [d for d in DOMAINS if d != "common"])
def test_api_every_response_carries_usage(domain: str) -> None:
    for svc in _file(domain).services_by_name.values():
        for method in svc.methods:
            usage = method.output_type.fields_by_name.get("usage")
            assert usage is not None, f"{method.output_type.full_name} has no usage field"
            assert usage.message_type is not None
            assert usage.message_type.full_name == "nanoforge.api.common.v1.Usage"


def _signature(desc: Descriptor) -> list[tuple]:
    def one(f: FieldDescriptor) -> tuple:
        oneof = f.containing_oneof.name if f.containing_oneof else None
        typed = f.message_type or f.enum_type
        sub = typed.full_name if typed is not None else None
        return (f.name, f.number, f.type, f.is_repeated, f.has_presence, oneof, sub)

    return [one(f) for f in desc.fields]


@pytest.mark.parametrize(
    ("unary", "stream"),
    [
        ("nanoforge.api.inference.v1.inference_pb2.GenerateRequest", "GenerateStreamRequest"),
        ("nanoforge.api.retriever.v1.retriever_pb2.AskRequest", "AskStreamRequest"),
    ],
)
def test_api_stream_requests_are_wire_compatible_with_unary(unary: str, stream: str) -> None:
    module_name, unary_name = unary.rsplit(".", 1)
    module = importlib.import_module(module_name)
    unary_cls, stream_cls = getattr(module, unary_name), getattr(module, stream)
    assert _signature(unary_cls.DESCRIPTOR) == _signature(stream_cls.DESCRIPTOR)


def test_api_message_modules_do_not_import_grpc() -> None:
    # Libraries (which must not import grpc) may use the *_pb2 messages; only *_pb2_grpc needs grpc.
    code = (
        "import sys\n"
        + "".join(f"import nanoforge.api.{d}.v1.{d}_pb2\n" for d in DOMAINS)
        + "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
