"""tools/gen_protos.py: the committed stubs are fresh, and --check catches every kind of staleness.

Each test copies protos/ and the stub tree into a temporary root and runs the tool against it (--root),
so the repository itself is never modified. Needs the pinned generator (the package's [test] extra).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]
TOOL = REPO / "tools" / "gen_protos.py"
STUBS = Path("packages") / "api" / "src" / "nanoforge" / "api"
INFERENCE = Path("nanoforge") / "api" / "inference" / "v1"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nanoforge_gen_protos", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    shutil.copytree(REPO / STUBS, tmp_path / STUBS, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _check(gen: ModuleType, root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = gen.main(["--check", "--root", str(root)])
    return code, capsys.readouterr().out


def test_api_committed_stubs_are_up_to_date(gen: ModuleType, root: Path, capsys) -> None:
    code, out = _check(gen, root, capsys)
    assert code == 0, out
    assert "up to date" in out


def test_api_check_reports_edited_missing_and_extra_files(gen: ModuleType, root: Path, capsys) -> None:
    src = root / STUBS.parent.parent  # .../packages/api/src
    edited = src / INFERENCE / "inference_pb2.py"
    edited.write_text(edited.read_text() + "\n# hand edit\n")
    (src / INFERENCE / "inference_pb2_grpc.pyi").unlink()
    (src / "nanoforge" / "api" / "trainer" / "v1" / "old_pb2.py").write_text("# left over\n")
    code, out = _check(gen, root, capsys)
    assert code == gen.EXIT_STALE
    assert out.splitlines() == [
        "stale:   nanoforge/api/inference/v1/inference_pb2.py",
        "missing: nanoforge/api/inference/v1/inference_pb2_grpc.pyi",
        "extra:   nanoforge/api/trainer/v1/old_pb2.py",
    ]
    assert edited.read_text().endswith("# hand edit\n")  # --check changes nothing


def test_api_check_detects_a_proto_change_and_generate_fixes_it(gen: ModuleType, root: Path, capsys) -> None:
    proto = root / "protos" / INFERENCE / "inference.proto"
    text = proto.read_text()
    anchor = "  string request_id = 4;\n}"
    assert anchor in text
    proto.write_text(text.replace(anchor, anchor[:-1] + "  // Test-only field.\n  uint32 extra = 5;\n}", 1))
    code, out = _check(gen, root, capsys)
    assert code == gen.EXIT_STALE
    assert "stale:   nanoforge/api/inference/v1/inference_pb2.py" in out.splitlines()
    assert "stale:   nanoforge/api/inference/v1/inference_pb2.pyi" in out.splitlines()

    assert gen.main(["--root", str(root)]) == 0
    capsys.readouterr()
    code, out = _check(gen, root, capsys)
    assert code == 0, out
    # hand-written modules beside the stubs survive regeneration
    assert (root / STUBS / "client.py").read_text() == (REPO / STUBS / "client.py").read_text()
    assert (root / STUBS / "__init__.py").is_file()


def test_api_generate_removes_stubs_of_deleted_protos(gen: ModuleType, root: Path, capsys) -> None:
    shutil.rmtree(root / "protos" / "nanoforge" / "api" / "trainer")
    assert gen.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "removed: nanoforge/api/trainer/v1/trainer_pb2.py" in out.splitlines()
    assert not list((root / STUBS / "trainer").rglob("*_pb2*"))


def test_api_wrong_generator_version_is_a_clear_error(
    gen: ModuleType, root: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(gen.GENERATOR_PINS, "grpcio-tools", "0.0.1")
    assert gen.main(["--check", "--root", str(root)]) == gen.EXIT_USAGE
    err = capsys.readouterr().err
    assert (
        "grpcio-tools is" in err
        and "generated with 0.0.1" in err
        and "pip install grpcio-tools==0.0.1" in err
    )


def test_api_proto_outside_package_dir_is_rejected(gen: ModuleType, root: Path, capsys) -> None:
    (root / "protos" / "stray.proto").write_text('syntax = "proto3";\n')
    assert gen.main(["--check", "--root", str(root)]) == gen.EXIT_USAGE
    assert "stray.proto" in capsys.readouterr().err
