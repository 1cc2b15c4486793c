"""The service is the only gateway to the stores and the hub (docs/architecture.md).

Imports are checked by import-linter (``[tool.importlinter]`` in pyproject.toml, run by
scripts/test); what an import cannot show is checked here: no code of the APIs or the cluster
tasks reaches through the service to its stores or its hub.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rmeeting

PACKAGE = Path(rmeeting.__file__).parent
#: the service's parts that only the service may call
PARTS = {"hub", "chat", "members", "meetings"}


def _reaches_through(source: str) -> list[str]:
    """``service.<part>`` (or ``….service.<part>``) in ``source``, as line: text."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Attribute) and node.attr in PARTS):
            continue
        owner = node.value
        name = owner.id if isinstance(owner, ast.Name) else \
            owner.attr if isinstance(owner, ast.Attribute) else ""
        if name.lstrip("_") == "service":
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(found)


def test_the_check_finds_what_it_looks_for() -> None:
    source = "async def f(service, self):\n    await service.hub.deliver(1)\n" \
             "    self._service.members.get()\n    service.config.x\n"
    assert _reaches_through(source) == ["2: service.hub", "3: self._service.members"]


@pytest.mark.parametrize("package", ["api", "cluster"])
def test_apis_and_cluster_tasks_call_only_the_service(package: str) -> None:
    offences = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted((PACKAGE / package).rglob("*.py"))
        if (found := _reaches_through(path.read_text(encoding="utf-8")))
    }
    assert offences == {}
