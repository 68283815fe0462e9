"""The command line as a new user meets it: `serve` on a busy port, pipes closed early, bad files,
options in either place, no config in the current folder, control characters in the call log,
the simulated phone against a gateway with a public URL, the venv scripts' install stamps."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from types import SimpleNamespace

import aiohttp
import pytest

from gateway.app import STORE
from gateway.web_state import CALLS
from gateway.calllog import open_store
from tests import proc
from tests.proc import run
from tests.calllog_helpers import TOKEN, api
from tests.conftest import REPO, TWILIO_SID, TWILIO_TOKEN, write_config
from tests.phone_helpers import dial, ended, ulaw_tone, wait_for

CLI = [sys.executable, "-m", "gateway"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ZHIPU_API_KEY", "OPENAI_API_KEY", "GATEWAY_OPERATOR_TOKEN", "GATEWAY_PUBLIC_URL")}
    env.update(extra)
    return env


async def test_second_serve_on_a_busy_port_says_so_in_one_line_and_leaves_the_call_log_alone(config_dir, tmp_path):
    config_path = write_config(config_dir)
    env = _env(GATEWAY_DATABASE_URL=f"sqlite:///{tmp_path}/calls.db", GATEWAY_OPERATOR_TOKEN=TOKEN)
    port = proc.free_port()
    url = f"http://127.0.0.1:{port}"
    first = proc.serve(port, env, config_path)
    try:
        phone = await dial(url, bot="echo")
        await phone.say(ulaw_tone(440, 0.4))
        await wait_for(lambda: phone.result.media_bytes > 10 * 160, 5, "the call to be up")
        serve = CLI + ["serve", "--port", str(port), "--config", str(config_path)]
        rc, _, err = await run(serve, {**env, "GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path}/second.db"})
        assert rc == 1
        assert err == f"error: cannot listen on 127.0.0.1:{port}: address already in use (is another gateway running?)\n"
        assert not (tmp_path / "second.db").exists()  # it never opened a call log
        # The same again on the shared call log: the first gateway's live call stays live.
        rc, _, err = await run(serve, env)
        assert rc == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
        status, call = await api(url, f"/api/calls/{phone.call_sid}")
        assert status == 200 and call["end_reason"] is None, call
        await phone.hangup()
    finally:
        log = proc.stop(first)
    listening = [line for line in log.splitlines() if "listening on" in line]
    assert listening == [line for line in listening if f"http://127.0.0.1:{port}" in line] and len(listening) == 1
    assert log.index("event=calllog_open") < log.index("listening on")  # said once actually serving
    assert f"dashboard http://127.0.0.1:{port}/ (operator API on: GATEWAY_OPERATOR_TOKEN is set" in log


def test_startup_says_where_the_dashboard_is_and_how_to_turn_it_on(config_dir, tmp_path):
    config_path = write_config(config_dir)
    env = _env(GATEWAY_DATABASE_URL=f"sqlite:///{tmp_path}/calls.db", GATEWAY_PUBLIC_URL="https://gw.example.com/")
    port = proc.free_port()
    log = proc.stop(proc.serve(port, env, config_path))
    assert "dashboard https://gw.example.com/ (operator API off: set GATEWAY_OPERATOR_TOKEN to turn it" in log


async def test_ctrl_c_while_the_gateway_is_still_loading_exits_quietly(config_dir, tmp_path):
    """Ctrl-C in the first moments of `serve` (its modules take ~0.4 s to load) ends it with status
    130: not a KeyboardInterrupt traceback from inside an import, and not a crash (on 3.13 an
    interrupt inside orjson's import killed the interpreter with SIGSEGV, 15 times in 20)."""
    config_path = write_config(config_dir)
    env = _env(GATEWAY_DATABASE_URL=f"sqlite:///{tmp_path}/calls.db")
    for _ in range(3):
        p = await asyncio.create_subprocess_exec(*CLI, "serve", "--port", str(proc.free_port()), "--config",
                                                 str(config_path), cwd=REPO, env=env,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)

        def loading() -> bool:  # orjson is the gateway's first import: the interpreter itself is up
            with open(f"/proc/{p.pid}/maps") as f:
                return "orjson" in f.read()
        await wait_for(loading, 10, "the gateway to start loading")
        p.send_signal(signal.SIGINT)
        out = (await asyncio.wait_for(p.communicate(), 20))[0].decode()
        assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
        assert p.returncode == 130, (p.returncode, out)


async def logged_calls(store_url: str, calls: dict[str, dict]) -> None:
    """Call records as the gateway writes them (through the store's write queue)."""
    store = open_store(store_url)
    await store.start()
    for call_id, fields in calls.items():
        store.enqueue("upsert_call", call_id, {"webhook_at": time.time(), "bot": "echo", "network": "twilio", **fields})
    await store.close()


async def test_a_reader_that_leaves_early_ends_the_listing_quietly(config_dir, tmp_path):
    """`calls list | head -1`: the pipe is closed before the CLI writes; it stops like a Unix tool."""
    env = _env(GATEWAY_DATABASE_URL=f"sqlite:///{tmp_path}/calls.db")
    await logged_calls(env["GATEWAY_DATABASE_URL"], {f"CA{i:032d}": {"from_number": "+15550001111"} for i in range(3)})
    config = str(write_config(config_dir))
    for command in (["calls", "list"], ["calls", "export"], ["calls", "export", "--format", "csv"],
                    ["check-config"]):
        p = subprocess.Popen(CLI + command + ["--config", config], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        p.stdout.close()  # the reader is gone before the first line
        err = p.stderr.read()
        assert p.wait(20) == 141 and err == "", (command, err)  # 128 + SIGPIPE, as a shell reports `seq 9 | true`


def test_unreadable_wav_files_are_named_not_traced(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("call the bank about the router\n" * 10)
    stub = tmp_path / "short.wav"
    stub.write_bytes(b"RIFF")
    cases = {"missing.wav": "error: --wav missing.wav: no such file\n",
             str(notes): f"error: --wav {notes}: not a PCM WAV file (file does not start with RIFF id)\n",
             str(stub): f"error: --wav {stub}: not a PCM WAV file (cut short)\n",
             str(tmp_path): f"error: --wav {tmp_path}: Is a directory\n"}
    for wav, message in cases.items():
        # --url points nowhere: the file is refused before anything is dialed
        done = subprocess.run(CLI + ["call", "--url", "http://127.0.0.1:9", "--wav", wav], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=20)
        assert (done.returncode, done.stderr, done.stdout) == (2, message, ""), wav
    done = subprocess.run(CLI + ["call", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "no" / "x.wav")],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=20)
    assert (done.returncode, done.stderr) == (2, f"error: --out {tmp_path / 'no' / 'x.wav'}: cannot write a file there\n")


async def test_control_characters_in_a_callers_number_are_shown_escaped_and_stored_as_received(
        make_gateway, store_url):
    gw = await make_gateway(env={"GATEWAY_DATABASE_URL": store_url})
    # newline, NUL, clear-screen and colour, RTL override. PostgreSQL text cannot hold NUL at all
    # (the record write fails: the store's side of the problem, not the CLI's), so there: DEL.
    nul = "\x00" if store_url.startswith("sqlite") else "\x7f"
    caller = f"+1555\n0100{nul}\x1b[2J\x1b[31mred\u202e"
    call_sid = "CA" + "c" * 32
    async with aiohttp.ClientSession() as s:  # the webhook refuses them now (issue 20)...
        async with s.post(gw.url + "/twilio/voice?bot=echo", data={"CallSid": call_sid, "From": caller,
                                                                  "To": "+15005550007"}) as r:
            assert r.status == 400
    # ...but records written before that, or by other tools, may hold them
    gw.app[STORE].enqueue("upsert_call", call_sid, {"webhook_at": time.time(), "from_number": caller,
                                                    "to_number": "+15005550007", "bot": "echo"})
    await gw.app[STORE].flush()
    assert (await gw.app[STORE].get_call(call_sid))["from_number"] == caller  # unchanged in the store
    config = str(gw.config.path)
    env = _env(GATEWAY_DATABASE_URL=store_url)
    rc, out, err = await run(CLI + ["calls", "list", "--config", config], env)
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and lines[-1] == "(1 of 1)", out  # header, one row, count: the table holds
    assert f" +1555\\n0100\\x{ord(nul):02x}\\ " in lines[1] and lines[1].endswith(call_sid)  # cut at 16
    assert not any(c in out for c in "\x00\x7f\x1b\u202e")
    rc, out, err = await run(CLI + ["calls", "show", call_sid, "--config", config], env)
    assert rc == 0 and f"from            +1555\\n0100\\x{ord(nul):02x}\\x1b[2J\\x1b[31mred\\u202e\n" in out, out + err
    rc, out, err = await run(CLI + ["calls", "export", "--config", config], env)
    assert rc == 0 and json.loads(out)["from"] == caller  # exports carry the data as it is


async def _phone_cli(argv: list[str], capsys) -> tuple[int, str]:
    """`python -m gateway call …` in this process (its gateway is in this event loop)."""
    from gateway.__main__ import build_parser
    from gateway.phone_cli import main as phone_main
    capsys.readouterr()
    rc = await phone_main(build_parser().parse_args(["call", *argv]))
    return rc, capsys.readouterr().out


async def test_simulated_phone_signs_the_public_urls_twilio_would_sign(make_gateway, tmp_path, monkeypatch, capsys):
    public = "https://gw.example.com"
    gw = await make_gateway(env={"TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "TWILIO_ACCOUNT_SID": TWILIO_SID,
                                 "GATEWAY_PUBLIC_URL": public})
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
    common = ["--url", gw.url, "--bot", "echo", "--wait", "0", "--hold", "0.6", "--out", str(tmp_path / "heard.wav")]
    monkeypatch.setenv("GATEWAY_PUBLIC_URL", public)  # the default, as in the gateway's own shell
    for extra in ([], ["--public-url", public + "/"]):
        rc, out = await _phone_cli(common + ["--json"] + extra, capsys)
        assert rc == 0, out
        summary = json.loads(out)
        assert summary["stream_url"] == "wss://gw.example.com/twilio/media" and summary["bot"] == "echo"
        assert summary["media_frames_received"] > 0 and summary["marks_echoed"] > 0, summary
        finished = await ended(gw, SimpleNamespace(call_sid=summary["call_id"]))  # the id is the gateway's call
        assert finished.end_reason == "caller_hangup"
    monkeypatch.delenv("GATEWAY_PUBLIC_URL")
    rc, out = await _phone_cli(common, capsys)  # signed for --url: what Twilio would not have dialed
    assert rc == 1 and out == ("call not connected: webhook answered HTTP 403: invalid X-Twilio-Signature (signed "
                               f"for {gw.url}: --public-url must be the gateway's GATEWAY_PUBLIC_URL and --auth-token "
                               "its TWILIO_AUTH_TOKEN)\n")


async def test_options_where_a_new_user_puts_them_and_help_that_says_the_defaults(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # eleven commands, run side by side: each answers on its own
    no_config = [run(CLI + command, _env(), cwd=elsewhere)
                 for command in (["calls", "list"], ["serve"], ["check-config"], ["calls", "show", "CA1"])]
    listing = run(CLI + ["calls", "list", "--config", str(REPO / "config.yaml")],
                  _env(GATEWAY_DATABASE_URL=f"sqlite:///{tmp_path}/calls.db"), cwd=elsewhere)
    typos = [run(CLI + command + ["--config", "prod.yaml"], _env())  # a typo is not "run on defaults"
             for command in (["serve"], ["check-config"], ["calls", "list"])]
    names = ("serve", "check-config", "call")
    helps = [run(CLI + [name, "--help"], _env()) for name in names]
    done = await asyncio.gather(*no_config, listing, *typos, *helps)
    for rc, _, err in done[:4]:
        assert (rc, err) == (2, f"error: no config.yaml in {elsewhere}; pass --config PATH\n")
    rc, out, err = done[4]
    assert rc == 0 and out.endswith("(0 of 0)\n"), err
    for rc, _, err in done[5:8]:
        assert (rc, err) == (2, "error: config file prod.yaml not found\n")
    helps = {name: " ".join(out.split()) for name, (_, out, _) in zip(names, done[8:])}
    assert "(default: config.yaml)" in helps["serve"]
    assert "(default: the config's server.port, else 8080)" in helps["serve"]
    assert "(default: config.yaml)" in helps["check-config"]
    assert "to hear the greeting (default: 2.0)" in helps["call"]


def test_serve_and_test_scripts_do_not_reinstall_when_run_in_turn(tmp_path):
    """scripts/serve installs the project, scripts/test the project with [test]: one install each time
    pyproject.toml changes, not one per switch (a test install covers serve too)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "_venv.sh", tmp_path / "scripts")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    shutil.copy(REPO / "constraints.txt", tmp_path)
    pip_log = tmp_path / "pip.log"
    venv_python = tmp_path / ".venv" / f"py{sys.version_info[0]}.{sys.version_info[1]}" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f'#!/bin/sh\necho "$*" >> {pip_log}\n')  # stands in for the venv's pip
    venv_python.chmod(0o755)

    def installs_after(*runs: str) -> list[str]:
        pip_log.write_text("")
        for extras in runs:
            subprocess.run(["bash", "-c", f'VENV_EXTRAS="{extras}"; source scripts/_venv.sh'], cwd=tmp_path,
                           env={**_env(), "PYTHON": sys.executable}, check=True, capture_output=True)
        return [line.split()[-1] for line in pip_log.read_text().splitlines() if " -e " in line]  # last: the target

    root = str(tmp_path)
    assert installs_after("[test]", "", "[test]", "", "") == [root + "[test]"]
    with open(tmp_path / "pyproject.toml", "a") as f:
        f.write("\n# a dependency changed\n")
    assert installs_after("", "", "[test]", "", "[test]") == [root, root + "[test]"]


async def test_a_url_without_a_scheme_is_taken_and_a_wrong_one_is_named(make_gateway, tmp_path, capsys):
    """Issue 20 item 14: `call --url 127.0.0.1:PORT` once printed "ws:///127.0.0.1:…127.0.0.1:…/twilio/voice"."""
    gw = await make_gateway()
    common = ["--bot", "echo", "--wait", "0", "--hold", "0.3", "--out", str(tmp_path / "heard.wav"), "--json"]
    rc, out = await _phone_cli(["--url", gw.url.removeprefix("http://"), *common], capsys)
    assert rc == 0, out
    assert json.loads(out)["stream_url"].startswith("ws://127.0.0.1:")
    for url, why in (("ftp://127.0.0.1:1", "expected http://HOST:PORT"), ("127.0.0.1:port", "not a port number"),
                     ("http://", "expected http://HOST:PORT")):
        capsys.readouterr()
        from gateway.__main__ import build_parser
        from gateway.phone_cli import main as phone_main
        rc = await phone_main(build_parser().parse_args(["call", "--url", url, *common]))
        err = capsys.readouterr().err
        assert rc == 2 and why in err and "Traceback" not in err, err


@pytest.mark.parametrize("started_with", ["default", "ignored"])
async def test_ctrl_c_in_a_call_hangs_up_prints_the_summary_and_writes_what_was_heard(make_gateway, tmp_path,
                                                                                      started_with):
    """Issue 20 item 14: an interrupted `call` used to exit 0 with no output and no heard.wav.
    `ignored`: started with SIGINT ignored (as a background job is), where asyncio.run installs no
    handler of its own and the call used to talk on until its --wait ran out."""
    gw = await make_gateway()
    out = tmp_path / "heard.wav"
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if started_with == "ignored" else None
    p = await asyncio.create_subprocess_exec(*CLI, "call", "--url", gw.url, "--bot", "echo", "--wait", "30", "--out",
                                             str(out), cwd=tmp_path, env=_env(), stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE, preexec_fn=ignore)
    await wait_for(lambda: len(gw.app[CALLS]) == 1, 15, "the call to be up")
    await asyncio.sleep(1.0)  # the greeting plays
    p.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(p.communicate(), 15)
    assert p.returncode == 130, (stdout, stderr)
    assert b"interrupted" in stderr and b"Traceback" not in stderr
    assert b"heard_wav" in stdout and b"media_frames_received" in stdout and out.exists()
    with wave.open(str(out)) as w:
        assert w.getnframes() >= 8000 * 0.8  # about a second heard, silence included
    await wait_for(lambda: not gw.app[CALLS], 5, "the gateway to see the hang-up")
