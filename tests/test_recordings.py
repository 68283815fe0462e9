"""Recordings: named by an opaque key the call record keeps (never after the caller's call id), and
kept in an S3-compatible bucket when `recording.url` says so — uploaded when the call ends, kept on
disk and retried until stored, served by any instance through the operator API, purged in the
bucket. The bucket is moto's S3 server on loopback (a real HTTP S3 endpoint, SigV4 and all)."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import wave

import aiohttp
import numpy as np
import pytest

from gateway.recording import ABANDONED_AFTER_SECONDS, AudioRecording, finish_abandoned
from gateway.recording_store import RECORDINGS
from gateway.web_state import STORE
from tests.calllog_helpers import TOKEN, api
from tests.phone_helpers import dial, ended, ulaw_tone, wait_for
from tests.proc import free_port

pytestmark = pytest.mark.looptime

BUCKET = "gw-recordings"
KEY_RE = re.compile(r"^[0-9a-f]{32}\.wav$")


class S3Server:
    """moto's S3 server in its own process; `stop()`/`start()` simulate an outage (same port and
    data only while it runs: an outage test re-creates the bucket)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError("moto's S3 server did not start")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self):
        from aiobotocore.session import get_session
        return get_session().create_client("s3", endpoint_url=self.url, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key="testing")

    async def objects(self, prefix: str = "") -> dict[str, bytes]:
        async with self.client() as c:
            listing = await c.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
            out = {}
            for o in listing.get("Contents", []):
                out[o["Key"]] = await (await c.get_object(Bucket=BUCKET, Key=o["Key"]))["Body"].read()
            return out

    async def make_bucket(self) -> None:
        async with self.client() as c:
            await c.create_bucket(Bucket=BUCKET)


@pytest.fixture
async def s3(monkeypatch):
    server = S3Server()
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-0123456789")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    await server.make_bucket()
    yield server
    server.stop()


async def _metric(url: str, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families
    status, body = await api(url, "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def _caller_rms(wav_bytes: bytes) -> float:
    with wave.open(io.BytesIO(wav_bytes)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(float).reshape(-1, 2)
    return float(np.sqrt(np.mean(x[:, 0] ** 2))) if len(x) else 0.0


async def _call(url: str, call_sid: str, loud: bool):
    phone = await dial(url, bot="echo", call_sid=call_sid)
    await phone.silence(0.3)
    await (phone.say(ulaw_tone(440, 0.6, amplitude=12000)) if loud else phone.silence(0.6))
    await phone.silence(0.2)
    await phone.hangup()
    return phone


async def test_calls_whose_ids_sanitise_alike_get_their_own_recordings(make_gateway, store_url):
    """Issue 20: `CAcollide.1` and `CAcollide_1` (and ids that differ after 64 characters) used to
    share one WAV; each call now has its own random key, and the API finds it through the record."""
    gw = await make_gateway(env={"GATEWAY_OPERATOR_TOKEN": TOKEN, "GATEWAY_DATABASE_URL": store_url},
                            extra="recording:\n  enabled: true\n")
    long_a, long_b = "CA" + "x" * 62 + "A", "CA" + "x" * 62 + "B"
    for sid, loud in (("CAcollide.1", True), ("CAcollide_1", False), (long_a, True), (long_b, False)):
        phone = await _call(gw.url, sid, loud)
        await ended(gw, phone)
    await gw.app[STORE].flush()
    keys, rms = {}, {}
    for sid in ("CAcollide.1", "CAcollide_1", long_a, long_b):
        row = await gw.app[STORE].get_call(sid)
        keys[sid] = row["recording"]
        assert KEY_RE.match(keys[sid]), keys
        status, wav_bytes = await api(gw.url, f"/api/calls/{sid}/recording")
        assert status == 200
        rms[sid] = _caller_rms(wav_bytes)
    assert len(set(keys.values())) == 4
    assert rms["CAcollide.1"] > 1000 > rms["CAcollide_1"] and rms[long_a] > 1000 > rms[long_b], rms
    assert sorted(p.name for p in (gw.config.base_dir / "data" / "recordings").iterdir()) == sorted(keys.values())


def test_a_recording_cut_by_a_crash_is_finished_and_kept(tmp_path):
    """A `.part` file nobody writes to any more (its process died) gets a valid header and its
    final name; one still being written is left alone."""
    rec = AudioRecording(tmp_path / "a" / "abc.wav")
    for _ in range(100):  # 2 s of caller audio, committed up to the last second
        rec.caller(b"\x10" * 160)
    rec._f.flush()  # the process "dies" here: no close()
    live = AudioRecording(tmp_path / "a" / "live.wav")
    live.caller(b"\x10" * 160)
    old = time.time() - ABANDONED_AFTER_SECONDS - 1
    os.utime(rec._part, (old, old))
    assert finish_abandoned(tmp_path / "a") == ["abc.wav"]
    with wave.open(str(tmp_path / "a" / "abc.wav")) as w:
        assert w.getnchannels() == 2 and w.getnframes() == 8000  # the first second (the last was still editable)
    assert (tmp_path / "a" / "live.wav.part").exists() and not (tmp_path / "a" / "live.wav").exists()
    rec._f.close()
    live.close()


@pytest.mark.looptime(False)  # the S3 server is another process: its client's timeouts on the real clock
async def test_recordings_go_to_the_bucket_and_any_instance_serves_them(make_gateway, store_url, s3, tmp_path):
    env = {"GATEWAY_OPERATOR_TOKEN": TOKEN, "GATEWAY_DATABASE_URL": store_url}
    a = await make_gateway(env=env, extra=f"recording:\n  enabled: true\n  url: s3://{BUCKET}/calls\n")
    b = await make_gateway(env=env, extra=f"recording:\n  enabled: true\n  url: s3://{BUCKET}/calls\n"
                                          f"  dir: {tmp_path}/b-recordings\n")
    phone = await _call(a.url, "CAbucket1", loud=True)
    await ended(a, phone)
    await a.app[STORE].flush()
    key = (await a.app[STORE].get_call("CAbucket1"))["recording"]
    local = a.config.base_dir / "data" / "recordings" / key
    await wait_for(lambda: not local.exists(), 5, "the upload (the local copy goes once it is stored)")
    stored = await s3.objects("calls/")
    assert list(stored) == [f"calls/{key}"]
    assert await _metric(a.url, "gateway_recording_uploads_total", result="stored") == 1
    assert await _metric(a.url, "gateway_recordings_waiting") == 0
    for gw in (a, b):  # b never had the file: it streams it from the bucket
        status, body = await api(gw.url, "/api/calls/CAbucket1/recording")
        assert status == 200 and body == stored[f"calls/{key}"] and _caller_rms(body) > 1000
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}", "Range": "bytes=0-11"}) as s:
        async with s.get(b.url + "/api/calls/CAbucket1/recording") as r:
            assert r.status == 206 and await r.read() == stored[f"calls/{key}"][:12]
            assert r.headers["Content-Range"].startswith("bytes 0-11/")
    assert (await api(b.url, "/api/calls/CAbucket1/recording", token=None))[0] == 401  # still the guarded door
    # Retention in the bucket: a purged record takes its object along; old objects go by age.
    await b.app[RECORDINGS].delete([key])
    assert await s3.objects("calls/") == {}
    status, body = await api(b.url, "/api/calls/CAbucket1/recording")
    assert status == 404 and "gone" in body["error"]


@pytest.mark.looptime(False)  # the S3 server is another process, on the real clock
async def test_recording_retention_applies_in_the_bucket(make_gateway, s3):
    gw = await make_gateway(extra=f"recording:\n  enabled: true\n  retention_days: 30\n  url: s3://{BUCKET}/r\n")
    async with s3.client() as c:
        for name in ("a.wav", "b.wav"):
            await c.put_object(Bucket=BUCKET, Key=f"r/{name}", Body=b"RIFF")
        await c.put_object(Bucket=BUCKET, Key="elsewhere/c.wav", Body=b"RIFF")  # not ours: never touched
    store = gw.app[RECORDINGS]
    assert await store.purge() == 0  # all new
    assert await store.purge(now=time.time() + 31 * 86400) == 2
    assert list(await s3.objects()) == ["elsewhere/c.wav"]


@pytest.mark.looptime(False)  # the S3 server is another process; the upload retries on the real clock
async def test_a_bucket_outage_loses_nothing_and_a_restart_uploads_what_waited(make_gateway, s3, caplog):
    extra = f"recording:\n  enabled: true\n  url: s3://{BUCKET}/calls\n"
    gw = await make_gateway(env={"GATEWAY_OPERATOR_TOKEN": TOKEN}, extra=extra)
    s3.stop()  # the bucket goes away mid-call
    phone = await _call(gw.url, "CAoutage1", loud=True)
    await ended(gw, phone)
    await gw.app[STORE].flush()
    key = (await gw.app[STORE].get_call("CAoutage1"))["recording"]
    local = gw.config.base_dir / "data" / "recordings" / key
    await wait_for(lambda: "event=recording_upload_failed" in caplog.text, 15, "the failed upload to be logged")
    assert local.exists()
    assert await _metric(gw.url, "gateway_recording_uploads_total", result="failed") >= 1
    assert await _metric(gw.url, "gateway_recordings_waiting") == 1
    status, body = await api(gw.url, "/api/calls/CAoutage1/recording")  # served from disk meanwhile
    assert status == 200 and _caller_rms(body) > 1000
    await gw.runner.cleanup()  # a restart while the bucket is still down: the file stays
    assert local.exists()
    s3.start()
    await s3.make_bucket()
    again = await make_gateway(env={"GATEWAY_OPERATOR_TOKEN": TOKEN}, extra=extra)
    await wait_for(lambda: not local.exists(), 10, "the upload after the restart")
    assert (await s3.objects())[f"calls/{key}"] == body
    assert (await api(again.url, "/api/calls/CAoutage1/recording"))[1] == body
    assert "testing-secret-0123456789" not in caplog.text


def test_recording_url_is_checked(config_dir):
    from gateway.config import ConfigError, load_config
    from tests.conftest import write_config
    for bad in ("s3://", "http://bucket/x", "s3://Bad_Bucket/x"):
        with pytest.raises(ConfigError, match="recording.url"):
            load_config(write_config(config_dir, f"recording:\n  url: '{bad}'\n"), env={})
    config = load_config(write_config(config_dir), env={"GATEWAY_RECORDING_URL": "s3://my-bucket/gw/calls"})
    assert config.recording.url == "s3://my-bucket/gw/calls"
