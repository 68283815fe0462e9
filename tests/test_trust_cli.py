"""Issue 20, what a new user meets: a call log that cannot be opened, the fake models on a busy
port, config validation that reports everything, negative numbers on the command line, `calls
show` / `calls list --json` / CSV, and a library's warning."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

import pytest

from gateway.calllog import open_store
from gateway.config import ConfigError, load_config
from tests.conftest import GLM_KEY, REPO, write_config
from tests.test_cli import CLI, _env, run


def _config_with_store(config_dir, url: str):
    return write_config(config_dir, f"storage:\n  url: {url}\n")


@pytest.mark.parametrize("kind", ["directory", "not_a_database", "unwritable"])
async def test_a_call_log_path_that_cannot_be_opened_is_one_line(config_dir, tmp_path, kind):
    """Item 13: `sqlite3.OperationalError: unable to open database file` / `file is not a
    database` ended `serve` and `calls list` in a traceback."""
    if kind == "directory":
        path = tmp_path / "calls.db"
        path.mkdir()
        why = "it is a directory"
    elif kind == "not_a_database":
        path = tmp_path / "calls.db"
        path.write_text("hello, I am a text file\n" * 100)
        why = "file is not a database"
    else:
        path = tmp_path / "ro" / "calls.db"
        path.parent.mkdir()
        path.parent.chmod(0o500)
        why = "unable to open database file"
    config = _config_with_store(config_dir, f"sqlite:///{path}")
    from tests.proc import free_port
    try:
        for cmd in (["calls", "list", "--config", str(config)],
                    ["serve", "--config", str(config), "--port", str(free_port())]):
            rc, out, err = await run(CLI + cmd, _env())
            if kind == "unwritable" and rc == 0:
                pytest.skip("running as a user who can write anywhere (root)")
            assert rc == 2 and "Traceback" not in err, err
            assert err.strip().splitlines()[-1] == (f"error: cannot open the call-log database {path}: {why} "
                                                    "(storage.url / GATEWAY_DATABASE_URL)"), err
    finally:
        path.parent.chmod(0o700)


async def test_the_fake_models_on_a_busy_port_say_so_in_one_line():
    """Item 14."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        rc, out, err = await run([sys.executable, "-m", "tests.fakes", "--glm-port", str(port), "--openai-port", "0"],
                                 _env())
    assert (rc, err) == (1, f"error: cannot listen on 127.0.0.1:{port}: address already in use "
                            "(choose another with --glm-port)\n")


def test_config_errors_are_all_reported_with_file_and_field(config_dir):
    """Item 15: validation stopped at the first error."""
    path = write_config(config_dir, "server:\n  port: 99999\n  drain_seconds: soon\naudio:\n  chunk_ms: 7\n"
                                    "nonsense: 1\n")
    (config_dir / "bots" / "bad.yaml").write_text("provider: echo\nlanguage: 42\ntemperature: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    bad = config_dir / "bots" / "bad.yaml"
    assert str(e.value).splitlines() == [
        "6 problems:",
        f"  {path}: nonsense: unknown key (known: {', '.join(sorted(_public_keys()))})",
        f"  {path}: server.drain_seconds: expected a number, got 'soon'",
        f"  {path}: server.port: expected 0..65535",
        f"  {path}: audio.chunk_ms: expected a multiple of 20 from 20 to audio.playout_lead_ms (200)",
        f"  {bad}: language: expected a language tag like en-US or zh-CN, got '42'",
        f"  {bad}: temperature: expected 0..1, got 5.0"]


def _public_keys() -> list[str]:
    import dataclasses
    from gateway.config import Config
    return [f.name for f in dataclasses.fields(Config) if not f.metadata.get("internal")]


def test_duplicate_yaml_keys_are_refused(config_dir):
    """Item 15: YAML keeps the last of two keys silently."""
    path = config_dir / "config.yaml"
    path.write_text("providers:\n  glm:\n    max_sessions: 3\n    api_key: x\n    max_sessions: 0\n")
    with pytest.raises(ConfigError, match=r"config.yaml: not valid YAML \(line 5, column 5\): duplicate key "
                                          r"'max_sessions'"):
        load_config(path, env={})


def test_a_number_from_the_environment_fills_a_number_field(config_dir):
    """Item 15: `max_sessions: ${VAR}` with VAR=3 was "expected an integer, got '3'"."""
    path = write_config(config_dir, "providers:\n  glm:\n    max_sessions: ${GLM_MAX}\n"
                                    "operator:\n  rate_limit_per_second: ${RATE}\nmetrics:\n  public: ${PUBLIC}\n")
    config = load_config(path, env={"GLM_MAX": "3", "RATE": "2.5", "PUBLIC": "true", "ZHIPU_API_KEY": GLM_KEY})
    assert (config.providers.glm.max_sessions, config.operator.rate_limit_per_second, config.metrics.public) == \
        (3, 2.5, True)
    with pytest.raises(ConfigError, match=r"providers.glm.max_sessions: expected an integer, got '３'"):
        load_config(path, env={"GLM_MAX": "３", "RATE": "1", "PUBLIC": "false"})  # full-width: not a number


@pytest.mark.parametrize("argv,message", [
    (["call", "--wait", "-1"], "python -m gateway call: error: argument --wait: expected 0 or more seconds, got -1"),
    (["call", "--hold", "-5"], "python -m gateway call: error: argument --hold: expected 0 or more seconds, got -5"),
    (["calls", "list", "--limit", "-1"],
     "python -m gateway calls list: error: argument --limit: expected a whole number of at least 1, got '-1'"),
])
async def test_negative_numbers_on_the_command_line_are_refused(argv, message):
    """Item 15."""
    rc, out, err = await run(CLI + argv, _env())
    assert rc == 2 and err.strip().splitlines()[-1] == message, err


async def test_calls_show_is_human_text_and_calls_list_has_json_and_csv_has_the_network(config_dir, tmp_path):
    """Items 16 and 17: `calls show` printed `error None` and `usage {...}`; `calls list --json`
    was missing; the CSV export had no network."""
    url = f"sqlite:///{tmp_path}/calls.db"
    config = _config_with_store(config_dir, url)
    store = open_store(url)
    await store.start()
    now = time.time()
    store.enqueue("upsert_call", "CAshow", {"webhook_at": now, "started_at": now, "ended_at": now + 3,
                                            "duration_s": 3.0, "end_reason": "caller_hangup", "bot": "echo",
                                            "network": "plivo", "from_number": "+15550001111", "input_tokens": 80,
                                            "output_tokens": 40})
    store.enqueue("add_event", "CAshow", 1, 1.0, "tool_call", None, {"name": "lookup", "error": None, "args": {"a": 1}})
    await store.close()
    rc, out, err = await run(CLI + ["calls", "show", "CAshow", "--config", str(config)], _env())
    assert rc == 0, err
    lines = dict(line.split(None, 1) for line in out.splitlines()[:18] if len(line.split(None, 1)) == 2)
    assert lines["error"] == "-" and lines["usage"] == "80 input tokens, 40 output tokens"
    assert lines["network"] == "plivo" and lines["recording"] == "no" and lines["duration_s"] == "3.0 s"
    assert "None" not in out and "{'" not in out and '[tool_call] name=lookup args={"a": 1}' in out, out
    rc, out, err = await run(CLI + ["calls", "list", "--json", "--config", str(config)], _env())
    listed = json.loads(out)
    assert rc == 0 and listed["total"] == 1 and listed["calls"][0]["call_id"] == "CAshow"
    assert listed["calls"][0]["network"] == "plivo"
    rc, out, err = await run(CLI + ["calls", "export", "--format", "csv", "--config", str(config)], _env())
    header, row = out.splitlines()[:2]
    assert header.startswith("call_id,network,") and row.startswith("CAshow,plivo,")


async def test_a_libraries_warning_is_one_log_line_not_raw_stderr():
    """Item 17: PyJWT's InsecureKeyLengthWarning (GLM key secrets are short) went raw to stderr."""
    code = ("import jwt; from gateway.logs import setup_logging; setup_logging(); "
            "jwt.encode({'a': 1}, 'short-secret', algorithm='HS256'); jwt.encode({'a': 2}, 'short-secret', algorithm='HS256')")
    p = await asyncio.create_subprocess_exec(sys.executable, "-W", "default", "-c", code, cwd=REPO,
                                             stderr=asyncio.subprocess.PIPE)
    _, err = await p.communicate()
    lines = err.decode().splitlines()
    assert len(lines) == 1 and "WARNING gateway event=library_warning category=InsecureKeyLengthWarning " \
                                "message=\"The HMAC key is 12 bytes long" in lines[0], lines
