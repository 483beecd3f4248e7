"""The direction of imports (docs/design.md, "Layout and dependencies"), read from the source:
common/ imports no Flower outside protocol.py, the two apps never import each other, the
packages never import the harness, the benchmarks or the tests, the command line (fedshare/)
dispatches to the apps and tools but never imports the harness or the tests, and tests never
import bench/."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Top-level module names ``path`` imports (absolute imports only; we use no others)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return {name.split(".")[0] for name in names}


def _files(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


FORBIDDEN = {
    "common": {"client_app", "server_app", "harness", "bench", "tests"},
    "client_app": {"server_app", "harness", "bench", "tests"},
    "server_app": {"client_app", "harness", "bench", "tests"},
    "harness": {"bench", "tests"},
    "fedshare": {"harness", "tests"},
    "tests": {"bench"},
}


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_point_down(folder):
    files = _files(folder)
    assert files
    wrong = {f"{p.relative_to(ROOT)} imports {sorted(_imports(p) & FORBIDDEN[folder])}"
             for p in files if _imports(p) & FORBIDDEN[folder]}
    assert not wrong, wrong


def test_only_the_protocol_module_of_common_knows_flower():
    """The protocol (its secure-aggregation messages in their own module) knows Flower's
    records; common/secagg.py uses Flower's secure-aggregation primitives (Shamir sharing,
    Fernet, the quantiser) and nothing else of Flower."""
    users = [p.relative_to(ROOT).as_posix() for p in _files("common") if "flwr" in _imports(p)]
    assert users == ["common/protocol.py", "common/protocol_secagg.py", "common/secagg.py"]
    secagg_imports = {node.module for node in ast.walk(ast.parse((ROOT / "common/secagg.py").read_text()))
                      if isinstance(node, ast.ImportFrom) and node.module.startswith("flwr")}
    assert all(m.startswith("flwr.common.secure_aggregation") for m in secagg_imports)


def test_only_the_edges_know_flower():
    """Flower's types stay at the edges: the protocol, the two app modules, the strategy
    (which sends Messages) and the CLI that reads a Flower app's run config."""
    allowed = {"common/protocol.py", "common/protocol_secagg.py", "common/secagg.py",
               "client_app/app.py", "server_app/app.py",
               "server_app/strategy.py", "fedshare/fingerprint.py"}
    users = {p.relative_to(ROOT).as_posix()
             for folder in ("common", "client_app", "server_app", "fedshare")
             for p in _files(folder) if "flwr" in _imports(p)}
    assert users <= allowed, users - allowed
