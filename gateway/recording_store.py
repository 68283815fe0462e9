"""Where finished call recordings are kept and served from: the local recordings directory (the
default) or an S3-compatible bucket (`recording.url: s3://bucket/prefix`).

With a bucket, the local directory is the outbox: a call's recording is written there as it
happens (recording.py), and when the call ends it is uploaded to `<prefix>/<key>` and only then
deleted locally. An upload that fails leaves the file where it is and is retried with back-off,
and every start-up (and a periodic scan) uploads whatever a previous run left, so nothing is lost
to a bucket outage or a restart. Workers and instances sharing one disk may both upload a file:
the key and the bytes are the same, so that is harmless. Any instance serves any recording: the
operator API (the one guarded door) streams it from the bucket, or from the local file while it
has not been uploaded yet. Retention applies in the bucket: objects under the prefix older than
`recording.retention_days` are deleted, and so are those of call records the call log purges.

Credentials and endpoint come the standard AWS way (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_REGION`, `AWS_ENDPOINT_URL` for MinIO, Ceph, R2, ...; or an instance/pod role).

Why aiobotocore rather than SigV4 signed by hand over our aiohttp session: the five requests we
make would be ~100 lines to sign, but the AWS credential chain would not be: IAM roles for
service accounts, instance profiles, SSO and expiring session tokens all come with botocore, as
do S3's retry and redirect rules and the endpoint settings of S3-compatible stores. It is the
async face of the official SDK, it runs on aiohttp (already ours), and it is an optional extra
(`voicebot-gateway[s3]`), so gateways that keep recordings on disk do not install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterable

from aiohttp import web

from .config import Config
from .recording import finish_abandoned, is_recording_key, purge_recordings, recordings_dir
from .web_state import CONFIG

log = logging.getLogger("gateway")
UPLOAD_RETRY_SECONDS = (2.0, 5.0, 15.0, 60.0, 300.0)  # back-off after a failed upload
RESCAN_SECONDS = 300.0  # look for files left behind (another worker's failure, a crash) this often
CHUNK = 64 * 1024


class RecordingUnavailable(Exception):
    """The storage holding recordings cannot be reached (the API answers 502)."""


class LocalRecordings:
    """Recordings on this machine's disk (`recording.dir`)."""

    def __init__(self, config: Config):
        self.config = config
        self.dir = recordings_dir(config)

    def __repr__(self) -> str:
        return f"local:{self.dir}"

    async def start(self) -> None:
        await asyncio.to_thread(finish_abandoned, self.dir)

    async def close(self) -> None:
        pass

    def finished(self, key: str) -> None:
        """A call's recording was closed (its file is `<dir>/<key>`)."""

    def _local(self, key: str) -> Path | None:
        path = self.dir / key
        return path if is_recording_key(key) and path.is_file() else None

    async def response(self, request: web.Request, key: str) -> web.StreamResponse | None:
        """The recording as an HTTP answer (ranges honoured), or None if it is not there."""
        path = self._local(key)
        return web.FileResponse(path, headers={"Content-Type": "audio/wav"}) if path else None

    async def delete(self, keys: Iterable[str]) -> None:
        """Recordings of purged call records."""
        for key in keys:
            if is_recording_key(key):
                with contextlib.suppress(OSError):
                    (self.dir / key).unlink()

    async def purge(self, now: float | None = None) -> int:
        """Retention (`recording.retention_days`): delete what is older; returns how many."""
        return await asyncio.to_thread(purge_recordings, self.config, now)


class S3Recordings(LocalRecordings):
    """Recordings in a bucket, the local directory as their outbox."""

    def __init__(self, config: Config):
        super().__init__(config)
        bucket, _, prefix = config.recording.url[len("s3://"):].partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = None
        self._exit = contextlib.AsyncExitStack()
        self._wake = asyncio.Event()
        self._uploader: asyncio.Task | None = None
        self.uploaded = 0
        self.upload_failures = 0
        self._failing = False

    def __repr__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def object_key(self, key: str) -> str:
        return self.prefix + key

    async def start(self) -> None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        await super().start()
        session = get_session()
        # Checksums only where S3 requires them: S3-compatible stores (MinIO, Ceph, older
        # releases) do not all accept the newer default trailers on uploads.
        config = AioConfig(request_checksum_calculation="when_required",
                           response_checksum_validation="when_required",
                           retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
        self._client = await self._exit.enter_async_context(
            session.create_client("s3", region_name=region, config=config))
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            log.info("event=recordings_bucket store=%s endpoint=%s", self, self._client.meta.endpoint_url)
        except Exception as e:  # noqa: BLE001 - recordings wait on disk until the bucket answers
            log.error("event=recordings_bucket_unreachable store=%s error=%s note=\"recordings are kept on disk "
                      "and uploaded when it answers\"", self, _describe(e))
        self._uploader = asyncio.create_task(self._upload_loop(), name="recordings-upload")

    async def close(self) -> None:
        """Stop uploading (a last pass first, briefly: what is left goes at the next start)."""
        if self._uploader is not None:
            self._uploader.cancel()
            await asyncio.gather(self._uploader, return_exceptions=True)
            self._uploader = None
            if not self._failing:  # the bucket answered last time: a short last pass; else the next start
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.upload_pending(), 5)
        await self._exit.aclose()
        self._client = None

    def finished(self, key: str) -> None:
        self._wake.set()

    def pending(self) -> list[Path]:
        """Finished recordings on disk that are not in the bucket yet, oldest first."""
        files = [(p.stat().st_mtime, p) for p in self.dir.glob("*.wav")] if self.dir.is_dir() else []
        return [p for _, p in sorted(files)]

    async def upload_pending(self) -> int:
        """Upload every finished recording on disk; raises on the first failure (the rest wait)."""
        done = 0
        for path in await asyncio.to_thread(self.pending):
            try:
                await self._upload(path)
            except FileNotFoundError:
                continue  # another worker on this disk uploaded it meanwhile
            done += 1
        return done

    async def _upload(self, path: Path) -> None:
        size = path.stat().st_size
        with open(path, "rb") as body:  # streamed by aiohttp (reads in a thread), not loaded whole
            await self._client.put_object(Bucket=self.bucket, Key=self.object_key(path.name), Body=body,
                                          ContentLength=size, ContentType="audio/wav")
        path.unlink(missing_ok=True)
        self.uploaded += 1
        log.info("event=recording_uploaded key=%s bytes=%d store=%s", path.name, size, self)

    async def _upload_loop(self) -> None:
        failures = 0
        while True:
            try:
                await asyncio.to_thread(finish_abandoned, self.dir)
                await self.upload_pending()
                failures, self._failing = 0, False
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the bucket may be down for a while: keep the files, retry
                self.upload_failures += 1
                self._failing = True
                delay = UPLOAD_RETRY_SECONDS[min(failures, len(UPLOAD_RETRY_SECONDS) - 1)]
                failures += 1
                log.error("event=recording_upload_failed store=%s waiting=%d retry_in_s=%g error=%s", self,
                          len(await asyncio.to_thread(self.pending)), delay, _describe(e))
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RESCAN_SECONDS)
            self._wake.clear()

    async def response(self, request: web.Request, key: str) -> web.StreamResponse | None:
        local = await super().response(request, key)  # not uploaded yet: this instance still has it
        if local is not None or not is_recording_key(key):
            return local
        from botocore.exceptions import ClientError

        ranged = request.headers.get("Range", "")
        try:
            obj = await self._client.get_object(Bucket=self.bucket, Key=self.object_key(key),
                                                **({"Range": ranged} if ranged.startswith("bytes=") else {}))
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            if code == "InvalidRange":
                raise web.HTTPRequestRangeNotSatisfiable() from None
            raise RecordingUnavailable(_describe(e)) from None
        except Exception as e:  # noqa: BLE001 - unreachable endpoint, timeout
            raise RecordingUnavailable(_describe(e)) from None
        headers = {"Content-Type": "audio/wav", "Accept-Ranges": "bytes", "Content-Length": str(obj["ContentLength"])}
        if obj.get("ContentRange"):
            headers["Content-Range"] = obj["ContentRange"]
        response = web.StreamResponse(status=206 if obj.get("ContentRange") else 200, headers=headers)
        body = obj["Body"]
        try:
            await response.prepare(request)
            while chunk := await body.read(CHUNK):
                await response.write(chunk)
            await response.write_eof()
        finally:
            body.close()
        return response

    async def delete(self, keys: Iterable[str]) -> None:
        keys = [k for k in keys if is_recording_key(k)]
        await super().delete(keys)
        for i in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            await self._client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self.object_key(k)} for k in keys[i:i + 1000]], "Quiet": True})

    async def purge(self, now: float | None = None) -> int:
        removed = await super().purge(now)  # local leftovers are not uploaded yet: kept unless old
        days = self.config.recording.retention_days
        if not days:
            return removed
        cutoff = (time.time() if now is None else now) - days * 86400
        old: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            old += [o["Key"] for o in page.get("Contents", []) if o["LastModified"].timestamp() < cutoff]
        for i in range(0, len(old), 1000):
            await self._client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in old[i:i + 1000]], "Quiet": True})
        if old:
            log.info("event=recordings_purged store=%s count=%d", self, len(old))
        return removed + len(old)


def _describe(e: BaseException) -> str:
    """One line for the log: the error class and S3's code/message, never credentials."""
    error = getattr(e, "response", {}).get("Error", {}) if hasattr(e, "response") else {}
    text = f"{error.get('Code')}: {error.get('Message')}" if error else str(e)
    return f"{type(e).__name__}: {text}"[:300]


def open_recordings(config: Config) -> LocalRecordings:
    return S3Recordings(config) if config.recording.url.startswith("s3://") else LocalRecordings(config)


RECORDINGS = web.AppKey("recordings", LocalRecordings)


async def recordings_ctx(app: web.Application):
    """Cleanup context: the recordings store for the app's lifetime."""
    store = open_recordings(app[CONFIG])
    await store.start()
    app[RECORDINGS] = store
    yield
    await store.close()
