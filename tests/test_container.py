"""The container image's rules (issue 14): dependencies in a layer before the code, pinned by
constraints.txt (the same pins scripts/_venv.sh, hence the tests and CI, install), the [postgres]
extra, a non-root user, a HEALTHCHECK that really answers, and a build context without .venv/,
.git or data/ (the call log: callers' personal data). scripts/build-image builds the image."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO
from tests.proc import free_port, serve, stop


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#") or (not raw.strip() and not current):
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1]
            continue
        word, _, args = current.strip().partition(" ")
        lines.append((word.upper(), args.strip()))
        current = ""
    return lines


def exec_form(args: str) -> list[str]:
    """A JSON-form argument list (CMD ["a", "b"]), as Docker parses it."""
    return json.loads(args)


def pins() -> dict[str, list[Requirement]]:
    """constraints.txt: package -> its pinned requirement(s) (several when markers split it)."""
    out: dict[str, list[Requirement]] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", line
            out.setdefault(canonicalize_name(req.name), []).append(req)
    return out


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_dependencies_are_installed_in_a_layer_before_the_code_pinned_by_the_constraints():
    steps = instructions()
    assert dict(steps)["ARG"] == "BASE=python:3.13-slim" and steps[1] == ("FROM", "${BASE}")
    copies = [i for i, (word, _) in enumerate(steps) if word in ("COPY", "ADD")]
    first_copy = steps[copies[0]][1].split()
    assert first_copy[:-1] == ["pyproject.toml", "constraints.txt"], "the first layer copies no code"
    code = next(i for i in copies if "gateway" in steps[i][1].split()[:-1])
    installs = [i for i, (word, args) in enumerate(steps) if word == "RUN" and "pip install" in args]
    assert installs and all(copies[0] < i < code for i in installs), "pip install runs between the two COPYs"
    run = steps[installs[0]][1]
    assert "-c constraints.txt" in run
    # The RUN derives its requirement list from pyproject.toml: run that very snippet here.
    snippet = re.search(r'python -c "(.*?)" > /tmp/requirements.txt', run).group(1)
    listed = subprocess.run([sys.executable, "-c", snippet],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")
    listed = [line for line in listed if line]
    extras = project()["optional-dependencies"]
    assert listed == project()["dependencies"] + extras["postgres"] + extras["s3"]
    assert any(Requirement(r).name == "asyncpg" for r in listed), "the [postgres] extra is in the image"
    assert any(Requirement(r).name == "aiobotocore" for r in listed), "the [s3] extra is in the image"
    pinned = pins()
    for r in listed:
        assert canonicalize_name(Requirement(r).name) in pinned, f"{r} has no pin in constraints.txt"


def test_the_gateway_runs_as_a_non_root_user_on_the_exposed_port():
    steps = instructions()
    users = [i for i, (word, _) in enumerate(steps) if word == "USER"]
    assert users, "no USER: the gateway would run as root"
    assert steps[users[-1]][1] not in ("root", "0", "0:0")
    assert all(i < users[-1] for i, (word, _) in enumerate(steps) if word == "RUN")
    cmd = exec_form(dict(steps)["CMD"])
    assert cmd[:4] == ["python", "-m", "gateway", "serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert dict(steps)["EXPOSE"] == cmd[cmd.index("--port") + 1] == "8080"


def test_the_healthcheck_answers_from_a_running_gateway_and_fails_without_one(tmp_path):
    args = dict(instructions())["HEALTHCHECK"]
    options, _, command = args.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    check = exec_form(command)
    assert check[0] == "python" and "/healthz" in check[-1] and "curl" not in command
    port = free_port()
    here = [sys.executable] + check[1:-1] + [check[-1].replace(":8080/", f":{port}/")]
    refused = subprocess.run(here, capture_output=True, text=True, timeout=10)
    assert refused.returncode == 1 and refused.stderr.startswith("unhealthy:") and "Traceback" not in refused.stderr
    config = tmp_path / "config.yaml"
    config.write_text(f"storage: {{url: 'sqlite:///{tmp_path}/calls.db'}}\nbots_dir: {REPO}/bots\n")
    proc = serve(port, {"PATH": "/usr/bin:/bin"}, config)
    try:
        healthy = subprocess.run(here, capture_output=True, text=True, timeout=10)
    finally:
        stop(proc)
    assert healthy.returncode == 0, healthy.stderr


def excluded(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parent
    directories decides; `!` re-includes; `*` stays within one path segment, `**` crosses them."""
    def match(pattern: str, p: str) -> bool:
        rx = re.escape(pattern.strip("/")).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace("\0", ".*")
        return re.fullmatch(rx.replace(r"\?", "[^/]"), p) is not None
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if any(match(pattern.lstrip("!"), p) for p in prefixes):
            verdict = not negate
    return verdict


def test_the_build_context_leaves_out_venv_git_and_the_call_log_but_has_what_the_dockerfile_copies():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for secret in [".venv/py3.11/bin/python", ".git/HEAD", "data/calls.db", "data/calls.db-wal",
                   "data/recordings/CA1.wav", "gateway/__pycache__/app.cpython-313.pyc", "tests/conftest.py"]:
        assert excluded(secret, patterns), f"{secret} would go into the build context"
    sources = [src for word, args in instructions() if word == "COPY" for src in args.split()[:-1]]
    for src in sources:
        for path in ([src] if (REPO / src).is_file() else
                     [str(p.relative_to(REPO)) for p in (REPO / src).rglob("*") if p.is_file()
                      and "__pycache__" not in p.parts]):
            assert not excluded(path, patterns), f"{path} is copied by the Dockerfile but ignored"


def test_constraints_pin_every_requirement_and_this_venv_has_exactly_those_versions():
    """scripts/_venv.sh installs with -c constraints.txt, so the venv running these tests (the
    README's command, CI's) holds the pinned versions; a requirement added to pyproject.toml
    without `scripts/lock` fails here."""
    venv_sh = (REPO / "scripts" / "_venv.sh").read_text()
    assert '-c "$ROOT/constraints.txt"' in venv_sh and '"$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum' in venv_sh
    pinned = pins()
    meta = project()
    wanted = meta["dependencies"] + [r for extra in meta["optional-dependencies"].values() for r in extra]
    for text in wanted:
        req = Requirement(text)
        if canonicalize_name(req.name) == canonicalize_name(meta["name"]):
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        applicable = [p for p in pinned.get(canonicalize_name(req.name), [])
                      if p.marker is None or p.marker.evaluate()]
        assert len(applicable) == 1, f"{req.name}: no pin for this Python in constraints.txt (run scripts/lock)"
        version = next(iter(applicable[0].specifier)).version
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} breaks {text}"
    for name, reqs in pinned.items():
        for p in reqs:
            if p.marker is None or p.marker.evaluate():
                try:
                    installed = metadata.version(name)
                except metadata.PackageNotFoundError:
                    continue  # pinned for another platform's needs (e.g. colorama on Windows)
                assert installed == next(iter(p.specifier)).version, f"{name} {installed} is not the pin {p}"
