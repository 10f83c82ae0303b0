"""The client needs none of the server's dependencies: ``protocol``, ``gateway.client`` and the
terminal client import nothing beyond msgspec, websockets and rich (and what those need).

Checked in a clean interpreter (``python -I -S``: no site-packages at all) whose path holds only
this checkout and links to those three distributions and their own requirements."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DEPENDENCIES = ("msgspec", "websockets", "rich")


def requirement_closure(names: tuple[str, ...]) -> set[str]:
    """The distributions ``names`` need to be imported (their non-extra requirements, down)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        for requirement in metadata.requires(name) or ():
            if "extra ==" in requirement:
                continue
            marker = requirement.split(";", 1)[1] if ";" in requirement else ""
            if "python_version" in marker:  # backports for older Pythons than ours
                continue
            todo.append(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
    return seen


def link_distributions(names: set[str], target: Path) -> set[str]:
    """Symlink the top-level modules of the distributions ``names`` into ``target``."""
    top: set[str] = set()
    for name in names:
        dist = metadata.distribution(name)
        for file in dist.files or ():
            first = file.parts[0]
            if first.endswith((".dist-info", ".data")) or first in ("..", "__pycache__"):
                continue
            module = first.removesuffix(".py") if len(file.parts) == 1 else first
            if len(file.parts) == 1 and not first.endswith((".py", ".so", ".pyd")):
                continue
            source = Path(str(dist.locate_file(first)))
            if not (target / first).exists():
                (target / first).symlink_to(source)
            top.add(module.split(".", 1)[0])
    return top


def isolated_python(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    setup = f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(site)!r}]\n"
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", setup + code],
        capture_output=True,
        text=True,
        cwd=site,
        env={"PATH": os.environ.get("PATH", ""), "TERM": "dumb"},
        check=False,
    )


def test_the_client_imports_nothing_of_the_server(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    allowed = link_distributions(requirement_closure(CLIENT_DEPENDENCIES), site)
    assert {"msgspec", "websockets", "rich"} <= allowed
    code = (
        "import protocol, gateway.client, gateway.tui, gateway.cli\n"
        "names = {name.split('.')[0] for name in sys.modules}\n"
        "print(' '.join(sorted(names - set(sys.stdlib_module_names))))\n"
        "print(' '.join(sorted(n for n in sys.modules if n.startswith('gateway.'))))\n"
    )
    proc = isolated_python(site, code)
    assert proc.returncode == 0, proc.stderr
    third_party, gateway_modules = proc.stdout.splitlines()
    assert set(third_party.split()) - {"__main__", "gateway", "protocol"} <= allowed
    assert set(gateway_modules.split()) == {
        "gateway.cli",
        "gateway.client",
        "gateway.client.client",
        "gateway.client.errors",
        "gateway.tui",
    }


def test_the_terminal_client_runs_without_the_server(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    link_distributions(requirement_closure(CLIENT_DEPENDENCIES), site)
    proc = isolated_python(
        site,
        "from gateway.cli import main\n"
        "raise SystemExit(main(['status', '--url', 'ws://127.0.0.1:9/ws']))\n",
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("ospark status: cannot connect to ws://127.0.0.1:9/ws: ")
