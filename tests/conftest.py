"""Shared fixtures: a gateway on 127.0.0.1 with its own config dir, the fake model servers."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import Config, load_config
from gateway.logs import REDACTOR, setup_logging

REPO = Path(__file__).resolve().parent.parent
GLM_KEY = "fakeid0123.fakesecret0123456789"
OPENAI_KEY = "sk-fake-openai-0123456789abcdef"
QWEN_KEY = "sk-fake-dashscope-0123456789abcdef"
GEMINI_KEY = "AIzaFakeGemini0123456789abcdefghijklmno"
TWILIO_SID, TWILIO_TOKEN = "AC" + "7" * 32, "twilio-auth-token-fake-0123"
TELNYX_KEY = "KEYtelnyx-api-key-fake-0123"
PLIVO_ID, PLIVO_TOKEN = "MAFAKE0123456789ABCD", "plivo-auth-token-fake-0123"
EXOTEL_KEY, EXOTEL_TOKEN = "exotel-key-fake", "exotel-token-fake-0123"
VONAGE_APP, VONAGE_SECRET = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab", "vonage-signature-secret-fake-0123"

# A persona with phone actions (issue 5): built-in tools, an HTTP tool, keypad shortcuts.
AGENT = """
        language: en-US
        instructions: You are a test agent.
        tools: [end_call, transfer_call]
        transfer_to: "+15550009999"
        transfer_targets:
          billing: "+15550008888"
        http_tools:
          - name: lookup_order
            description: Look up an order by its id.
            url: ${ORDER_API_URL:-http://127.0.0.1:9/orders}
            headers:
              Authorization: Bearer ${ORDER_API_TOKEN:-order-api-secret-123}
            timeout_seconds: 2
            parameters:
              type: object
              properties:
                order_id: {type: string, pattern: "^[A-Z][0-9]{3}$"}
              required: [order_id]
              additionalProperties: false
        dtmf:
          inter_digit_ms: 300
          shortcuts:
            "0": transfer
            "9": "transfer:billing"
        """

TEST_BOTS = {
    # A GLM persona that greets (the fake answers greeting_config with a tone).
    "glm-greeter": """
        provider: glm
        voice: tongtong
        language: en-US
        greeting: "Hello, thanks for calling Northwind."
        instructions: You are a test bot.
        """,
    # A GLM persona with no greeting: the caller speaks first.
    "glm-quiet": """
        provider: glm
        language: en-US
        instructions: You are a test bot.
        """,
    # OpenAI personas: pcmu passthrough (the default) and 24 kHz PCM.
    "openai-greeter": """
        provider: openai
        voice: alloy
        language: en-US
        greeting: "Hello, thanks for calling Northwind."
        instructions: You are a test bot.
        """,
    "openai-quiet": """
        provider: openai
        language: en-US
        instructions: You are a test bot.
        """,
    # The shipped personas' barge-in policy: silent at once, cut only once confirmed.
    "openai-confirm": """
        provider: openai
        language: en-US
        greeting: "Hello, thanks for calling Northwind."
        instructions: You are a test bot.
        barge_in: {policy: confirm, min_speech_ms: 300, confirm_ms: 700}
        """,
    "glm-agent": "provider: glm\n" + textwrap.dedent(AGENT),
    "openai-agent": "provider: openai\n" + textwrap.dedent(AGENT),
    # Qwen-Omni realtime and Gemini Live: the same three personas.
    **{f"{p}-greeter": f"""
        provider: {p}
        language: en-US
        greeting: "Hello, thanks for calling Northwind."
        instructions: You are a test bot.
        """ for p in ("qwen", "gemini")},
    **{f"{p}-quiet": f"""
        provider: {p}
        language: en-US
        instructions: You are a test bot.
        """ for p in ("qwen", "gemini")},
    **{f"{p}-agent": f"provider: {p}\n" + textwrap.dedent(AGENT) for p in ("qwen", "gemini")},
    "openai-pcm": """
        provider: openai
        language: en-US
        instructions: You are a test bot.
        audio:
          input_format: pcm
          output_format: pcm
        """,
}


@dataclass
class Gateway:
    url: str
    app: web.Application
    config: Config
    runner: web.AppRunner


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_gateway_log_line():
    """Across the whole run (every test, every call, every failure path): no line our code logs —
    before any redaction — contains one of the fake secrets the tests use."""
    from tests.calllog_helpers import TOKEN as OPERATOR_TOKEN
    secrets = [GLM_KEY.split(".")[1], OPENAI_KEY, QWEN_KEY, GEMINI_KEY, TWILIO_TOKEN, TELNYX_KEY, PLIVO_TOKEN, EXOTEL_TOKEN, VONAGE_SECRET, OPERATOR_TOKEN, "order-secret-xyz",
               "order-api-secret-123", "wrongsecret123456"]
    logger = logging.getLogger("gateway")
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.debug("secret check: collecting")  # proves the collector is wired, whatever tests run
    yield
    logger.removeHandler(handler)
    logger.setLevel(level)
    leaks = [line[:300] for line in handler.lines if any(secret in line for secret in secrets)]
    assert not leaks, f"{len(leaks)} log lines carry a secret, e.g. {leaks[:3]}"
    assert handler.lines, "the secret check's collector saw nothing, not even its own line"


@pytest.fixture(autouse=True)
async def _close_phones():
    from tests.phone_helpers import OPEN_PHONES

    yield
    while OPEN_PHONES:
        await OPEN_PHONES.pop().close()


@contextlib.asynccontextmanager
async def _running(server):
    """A fake model server for one test: started, then stopped and checked for barge-in protocol errors."""
    await server.start()
    yield server
    await server.stop()
    _no_barge_in_protocol_errors(server)


@pytest.fixture
async def fake_glm():
    from gateway.providers.glm import LEARNED_EXP_UNITS
    from tests.fakes.glm_server import FakeGLM

    try:
        async with _running(FakeGLM(api_key=GLM_KEY)) as server:
            yield server
    finally:
        LEARNED_EXP_UNITS.clear()  # what a gateway learned about this fake's port must not outlive it


@pytest.fixture
async def fake_openai():
    from tests.fakes.openai_server import FakeOpenAI

    async with _running(FakeOpenAI(api_key=OPENAI_KEY)) as server:
        yield server


@pytest.fixture
async def fake_qwen():
    from tests.fakes.qwen_server import FakeQwen

    async with _running(FakeQwen(api_key=QWEN_KEY)) as server:
        yield server


@pytest.fixture
async def fake_gemini():
    from tests.fakes.gemini_server import FakeGemini

    async with _running(FakeGemini(api_key=GEMINI_KEY)) as server:
        yield server


def _no_barge_in_protocol_errors(fake) -> None:
    """In every test, not only the barge-in ones: the gateway never cancels an idle response and
    never truncates past the audio a model generated (the two classic barge-in bugs)."""
    for s in fake.sessions:
        for e in s.errors_sent:
            err = e["error"]
            assert err.get("code") != "response_cancel_not_active", err
            assert "already shorter than" not in str(err.get("message")), err


# PostgreSQL is another process whose timeouts run on the real clock: its tests never fast-forward.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.looptime(False))])
async def store_url(request, tmp_path):
    """A fresh, empty call-log database per test, for each engine.

    PostgreSQL comes from GATEWAY_TEST_POSTGRES_URL, which scripts/test sets after starting a
    throwaway server; each test gets its own database in it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/calls.db"
        return
    from tests.pg import fresh_database
    async with fresh_database() as url:
        yield url


@pytest.fixture
async def fake_rest():
    from tests.fakes.twilio_rest import FakeTwilioRest

    server = FakeTwilioRest(TWILIO_SID, TWILIO_TOKEN)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def gateway_log():
    """The production log pipeline (handler + redactor) at DEBUG, written to a buffer.

    websockets (the fake model servers, in this process) is turned up to DEBUG too: it dumps the
    upgrade requests' headers (Authorization included), which is exactly what the redactor has to
    catch."""
    buf = io.StringIO()
    setup_logging("DEBUG", "text", [GLM_KEY, OPENAI_KEY, QWEN_KEY, GEMINI_KEY, TWILIO_TOKEN])
    root = logging.getLogger()
    handler = next(h for h in root.handlers if getattr(h, "_gateway", False))
    handler.setStream(buf)
    logging.getLogger("websockets").setLevel(logging.DEBUG)
    yield buf
    root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.NOTSET)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A copy of the shipped bots plus the test personas, and a config.yaml using them."""
    bots = tmp_path / "bots"
    shutil.copytree(REPO / "bots", bots)
    for name, text in TEST_BOTS.items():
        (bots / f"{name}.yaml").write_text(textwrap.dedent(text))
    return tmp_path


def write_config(config_dir: Path, extra: str = "") -> Path:
    """The tests' config.yaml plus `extra`; a section `extra` also has is merged into the base one
    (the loader refuses a key written twice)."""
    import yaml
    path = config_dir / "config.yaml"
    base = textwrap.dedent("""
        routing:
          default_bot: support
          fallback_bot: echo
          numbers:
            "+15005550006": support
            "+15005550007": echo
            "+15005550008": glm-greeter
        limits:
          start_timeout_seconds: 3
        audio:
          playout_lead_ms: 200
        """)
    extra = textwrap.dedent(extra)
    try:
        more = yaml.safe_load(extra)
    except yaml.YAMLError:
        more = None
    if isinstance(more, dict) and set(more) & {"routing", "limits", "audio"}:
        merged = yaml.safe_load(base)
        for key, value in more.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                for k, v in value.items():
                    merged[key][k] = {**merged[key][k], **v} if isinstance(v, dict) and isinstance(
                        merged[key].get(k), dict) else v
            else:
                merged[key] = value
        path.write_text(yaml.safe_dump(merged, sort_keys=False))
    else:
        path.write_text(base + extra)
    return path


@pytest.fixture
async def make_gateway(config_dir: Path):
    """Start gateways on free loopback ports; all are stopped at the end of the test."""
    runners: list[web.AppRunner] = []

    async def start(glm=None, extra: str = "", env: dict | None = None, openai=None, rest=None,
                    port: int = 0, qwen=None, gemini=None) -> Gateway:
        environ = dict(env or {})
        if rest is not None:
            environ.update(TWILIO_ACCOUNT_SID=TWILIO_SID, TWILIO_AUTH_TOKEN=TWILIO_TOKEN, TWILIO_API_BASE=rest.url)
        if glm is not None:
            environ.setdefault("ZHIPU_API_KEY", GLM_KEY)
            environ.setdefault("GLM_REALTIME_URL", glm.url)
        if openai is not None:
            environ.setdefault("OPENAI_API_KEY", OPENAI_KEY)
            environ.setdefault("OPENAI_REALTIME_URL", openai.url)
        if qwen is not None:
            environ.setdefault("DASHSCOPE_API_KEY", QWEN_KEY)
            environ.setdefault("QWEN_REALTIME_URL", qwen.url)
        if gemini is not None:
            environ.setdefault("GEMINI_API_KEY", GEMINI_KEY)
            environ.setdefault("GEMINI_LIVE_URL", gemini.url)
        config = load_config(write_config(config_dir, extra), env=environ)
        REDACTOR.add(*config.secrets())
        app = create_app(config)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        runners.append(runner)
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        if config.signatures_required:
            from tests.phone_helpers import AUTH_TOKENS
            AUTH_TOKENS[url] = config.twilio.auth_token
        return Gateway(url, app, config, runner)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture(params=["glm", "openai", "qwen", "gemini"])
def model(request):
    """Each call-level test that takes `model` runs once per realtime model."""
    from tests.models import Model

    fake = request.getfixturevalue(f"fake_{request.param}")
    if request.param == "glm":
        return Model("glm", fake, "glm-greeter", "glm-quiet", "ZHIPU_API_KEY", GLM_KEY.split(".")[1],
                     "wrongid.wrongsecret123456", "1113", key=GLM_KEY)
    if request.param == "openai":
        return Model("openai", fake, "openai-greeter", "openai-quiet", "OPENAI_API_KEY", OPENAI_KEY[8:],
                     "sk-wrong-wrongsecret123456", "insufficient_quota", key=OPENAI_KEY)
    if request.param == "qwen":
        return Model("qwen", fake, "qwen-greeter", "qwen-quiet", "DASHSCOPE_API_KEY", QWEN_KEY[8:],
                     "sk-wrong-wrongsecret123456", "Arrearage", key=QWEN_KEY)
    return Model("gemini", fake, "gemini-greeter", "gemini-quiet", "GEMINI_API_KEY", GEMINI_KEY[4:],
                 "AIza-wrong-wrongsecret123456", "RESOURCE_EXHAUSTED", key=GEMINI_KEY, client_cancel=False,
                 refusal="API key not valid", key_header="x-goog-api-key: ***")


@pytest.fixture(autouse=True)
async def _call_path_clock(request):
    """In a test marked `looptime`, the gateway, the fakes and the simulated phone read the event
    loop's fast-forwarded clock (gateway/clock.py), so the whole call runs in virtual time."""
    marker = request.node.get_closest_marker("looptime")
    if marker is None or (marker.args and not marker.args[0]):  # looptime(False): the real clock
        yield
        return
    import asyncio
    from gateway import clock
    previous = clock.use(asyncio.get_running_loop().time)
    yield
    clock.use(previous)
