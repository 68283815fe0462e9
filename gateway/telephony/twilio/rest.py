"""Twilio's REST API, the few calls the gateway makes: end a call, redirect it to new TwiML
(transfer), create an outbound call.

aiohttp with HTTP Basic auth (Account SID + auth token; no request signing is needed in this
direction), on the app's shared client session so connections (and TLS) are reused.
`TWILIO_API_BASE` points it at a fake in tests. Up to 3 attempts with exponential backoff; 4xx
errors are final. Hang-up and redirect are idempotent, so network errors, timeouts, 429 and 5xx
are retried. Creating a call is not: it is retried only when Twilio provably created nothing —
the connection could not be made (refused, DNS), or 429 (waiting `Retry-After`) — never after a
timeout or a 5xx, which could ring the callee twice. Error 20404 (the call is not found / already
over) on a hang-up is success: the call is over either way.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from .. import PhoneActionError

log = logging.getLogger("gateway")

RETRY_STATUSES = {429, 500, 502, 503, 504}
ALREADY_OVER = 20404


class TwilioRestError(PhoneActionError):
    def __init__(self, status: int, code: int | None, message: str):
        super().__init__(f"Twilio REST {status} (code {code}): {message}", status)
        self.status, self.code, self.message = status, code, message


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (Twilio sends delta-seconds); None if absent or not a number."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


@dataclass
class TwilioRest:
    account_sid: str
    auth_token: str
    session: aiohttp.ClientSession  # the app's (see app._http_client)
    api_base: str = "https://api.twilio.com"
    timeout: float = 10.0
    attempts: int = 3
    backoff: float = 0.3
    max_retry_after: float = 10.0  # a 429 asking to wait longer than this is final

    @property
    def configured(self) -> bool:
        return bool(self.account_sid and self.auth_token)

    def _url(self, path: str) -> str:
        return f"{self.api_base.rstrip('/')}/2010-04-01/Accounts/{quote(self.account_sid)}/{path}"

    async def _post(self, path: str, form: dict[str, str], idempotent: bool = True) -> dict:
        if not self.configured:
            raise TwilioRestError(0, None, "twilio.account_sid / twilio.auth_token are not configured")
        basic = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode("ascii")
        headers = {"Authorization": f"Basic {basic}"}
        last: TwilioRestError | None = None
        delay = self.backoff
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 3
            try:
                async with self.session.post(self._url(path), data=form, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                    try:
                        body = await r.json(content_type=None) if r.content_length != 0 else {}
                    except ValueError:  # e.g. a proxy's HTML error page
                        body = {}
                    body = body if isinstance(body, dict) else {}
                    if r.status < 300:
                        return body
                    last = TwilioRestError(r.status, body.get("code"),
                                           str(body.get("message") or f"HTTP {r.status}")[:300])
                    if r.status == 429:  # refused before doing anything: safe to retry, when asked
                        wait = _retry_after(r.headers.get("Retry-After"))
                        if wait is not None and wait > self.max_retry_after:
                            raise last
                        delay = max(delay, wait or 0.0)
                    elif not (idempotent and r.status in RETRY_STATUSES):
                        raise last
            except aiohttp.ClientConnectorError as e:  # no connection, so nothing was sent
                last = TwilioRestError(0, None, f"{type(e).__name__}: {e}"[:300])
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                what = f"no answer within {self.timeout:g} s" if isinstance(e, asyncio.TimeoutError) else str(e)
                last = TwilioRestError(0, None, f"{type(e).__name__}: {what}"[:300])
                if not idempotent:  # the request may have reached Twilio: do not repeat it
                    raise TwilioRestError(0, None, f"{last.message} (not retried: it may have gone "
                                                   "through, check before trying again)") from e
            log.warning("event=twilio_rest_retry path=%s attempt=%d error=%s", path.split("/")[0], attempt + 1, last)
        assert last is not None
        raise last

    async def hang_up(self, call_sid: str) -> bool:
        """End the call. True if Twilio ended it now, False if it was already over."""
        try:
            await self._post(f"Calls/{quote(call_sid)}.json", {"Status": "completed"})
            return True
        except TwilioRestError as e:
            if e.code == ALREADY_OVER or e.status == 404:
                return False
            raise

    async def redirect(self, call_sid: str, twiml: str) -> dict:
        """Replace what the call is doing with new TwiML (e.g. a <Dial> to transfer it)."""
        return await self._post(f"Calls/{quote(call_sid)}.json", {"Twiml": twiml})

    async def create_call(self, to: str, from_: str, url: str, **extra: str) -> dict:
        """Start an outbound call; Twilio fetches `url` (our webhook) when it is answered."""
        return await self._post("Calls.json", {"To": to, "From": from_, "Url": url, "Method": "POST", **extra},
                                idempotent=False)
