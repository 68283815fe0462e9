"""config.yaml and persona validation: errors name the file and the field; env wins."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.config import ConfigError, load_config
from tests.conftest import REPO, write_config


def test_shipped_config_and_bots_are_valid():
    config = load_config(REPO / "config.yaml", env={})
    assert {"support", "echo"} <= set(config.bots)
    support = config.bots["support"]
    assert support.provider == "glm" and support.greeting and support.instructions
    assert support.tools == ["end_call", "transfer_call"] and support.transfer_to.startswith("+")
    assert support.dtmf.shortcuts == {"0": "transfer"}
    assert not config.provider_ready(support)  # no key in this environment
    assert config.provider_ready(config.bots["echo"])
    openai = config.bots["support-openai"]
    assert openai.provider == "openai" and openai.greeting and openai.instructions
    assert (openai.audio.input_format, openai.audio.output_format) == ("pcmu", "pcmu")
    assert config.bots["support"].audio.input_format == "wav"  # the GLM default, resolved at load
    qwen, gemini = config.bots["support-qwen"], config.bots["support-gemini"]
    assert (qwen.provider, qwen.model, gemini.provider, gemini.model) == (
        "qwen", "qwen3.5-omni-flash-realtime", "gemini", "gemini-3.8-live")
    for bot in (qwen, gemini):  # the same support agent
        assert bot.tools == support.tools and bot.greeting and bot.transfer_targets.keys() == {"billing"}
        assert (bot.audio.input_format, bot.audio.output_format) == ("pcm16", "pcm24")
    assert qwen.instructions == support.instructions and qwen.greeting == support.greeting


def test_qwen_and_gemini_keys_urls_and_pools_come_from_the_environment(config_dir):
    config = load_config(write_config(config_dir), env={
        "DASHSCOPE_API_KEY": "sk-q", "QWEN_REALTIME_URL": "wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime",
        "GEMINI_API_KEYS": "g1, g2", "GEMINI_LIVE_URL": "ws://127.0.0.1:1/ws/x"})
    assert config.providers.qwen.api_key == "sk-q" and config.providers.qwen.url.startswith("wss://dashscope-intl")
    assert config.providers.gemini.api_keys == ["g1", "g2"] and config.providers.gemini.url == "ws://127.0.0.1:1/ws/x"
    assert config.provider_ready(config.bots["support-qwen"]) and config.provider_ready(config.bots["support-gemini"])
    assert {"sk-q", "g1", "g2"} <= set(config.secrets())
    assert config.providers.qwen.url != config.providers.gemini.url
    default = load_config(write_config(config_dir), env={})
    assert default.providers.qwen.url == "wss://dashscope.aliyuncs.com/api-ws/v1/realtime"
    assert default.providers.gemini.url == ("wss://generativelanguage.googleapis.com/ws/"
                                            "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent")
    assert not default.provider_ready(default.bots["support-gemini"])


def test_provider_defaults_for_audio_formats(config_dir):
    (config_dir / "bots" / "plain-openai.yaml").write_text("provider: openai\n")
    (config_dir / "bots" / "plain-glm.yaml").write_text("provider: glm\n")
    bots = load_config(write_config(config_dir), env={}).bots
    assert (bots["plain-openai"].audio.input_format, bots["plain-openai"].audio.output_format) == ("pcmu", "pcmu")
    assert (bots["plain-glm"].audio.input_format, bots["plain-glm"].audio.output_format) == ("wav", "pcm")
    assert bots["plain-openai"].model == "gpt-realtime"


def test_environment_overrides_win(config_dir):
    path = write_config(config_dir, "server:\n  public_url: https://from-file.example\n")
    config = load_config(path, env={"ZHIPU_API_KEY": "abc.def", "GATEWAY_PUBLIC_URL": "https://gw.example",
                                    "GLM_REALTIME_URL": "ws://127.0.0.1:1/x", "TWILIO_API_BASE": "http://127.0.0.1:2"})
    assert config.server.public_url == "https://gw.example"
    assert config.providers.glm.api_key == "abc.def"
    assert config.providers.glm.url == "ws://127.0.0.1:1/x"
    assert config.twilio.api_base == "http://127.0.0.1:2"
    assert config.provider_ready(config.bots["support"])
    assert not config.provider_ready(config.bots["support-openai"])
    config = load_config(path, env={"OPENAI_API_KEY": "sk-x", "OPENAI_REALTIME_URL": "wss://az.example/openai/realtime"})
    assert config.providers.openai.api_key == "sk-x" and config.providers.openai.url == "wss://az.example/openai/realtime"
    assert config.provider_ready(config.bots["support-openai"])


def test_env_substitution(config_dir):
    path = write_config(config_dir, "twilio:\n  auth_token: ${MY_TOKEN}\n  account_sid: ${MY_SID:-ACdefault}\n")
    config = load_config(path, env={"MY_TOKEN": "tok"})
    assert config.twilio.auth_token == "tok" and config.twilio.account_sid == "ACdefault"
    with pytest.raises(ConfigError, match=r"config.yaml: twilio.auth_token: environment variable MY_TOKEN"):
        load_config(path, env={})


@pytest.mark.parametrize("extra,message", [
    ("server:\n  prot: 1\n", r"config.yaml: server.prot: unknown key"),
    ("server:\n  port: eighty\n", r"config.yaml: server.port: expected an integer, got 'eighty'"),
    ("server:\n  port: 70000\n", r"config.yaml: server.port: expected 0..65535"),
    ("logging:\n  level: LOUD\n", r"config.yaml: logging.level: expected one of"),
    ("routing:\n  numbers:\n    '+1555': nobody\n", r"config.yaml: routing.numbers.\+1555: no bot 'nobody'"),
    ("audio:\n  playout_lead_ms: 5\n", r"config.yaml: audio.playout_lead_ms: expected 40..2000"),
    ("audio:\n  chunk_ms: 50\n", r"config.yaml: audio.chunk_ms: expected a multiple of 20 from 20 to audio.playout_lead_ms \(200\)"),
    ("audio:\n  chunk_ms: 400\n", r"config.yaml: audio.chunk_ms: expected a multiple of 20 from 20"),
    ("providers:\n  openai:\n    append_ms: 30\n", r"config.yaml: providers.openai.append_ms: expected a multiple of 20"),
    ("bogus: 1\n", r"config.yaml: bogus: unknown key"),
])
def test_config_errors_name_file_and_field(config_dir, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(config_dir, extra), env={})


@pytest.mark.parametrize("yaml_text,message", [
    ("provider: glm\nvoicee: x\n", r"bad.yaml: voicee: unknown key"),
    ("voice: tongtong\n", r"bad.yaml: provider: required"),
    ("provider: gpt\n", r"bad.yaml: provider: expected one of 'glm', 'openai', 'qwen', 'gemini', 'echo'"),
    ("provider: qwen\nmodel: qwen3-omni-flash-realtime\nhttp_tools:\n  - {name: a, description: b, url: 'http://x'}\n",
     r"bad.yaml: http_tools: Qwen model 'qwen3-omni-flash-realtime' takes no functions"),
    ("provider: gemini\naudio:\n  input_format: pcmu\n", r"bad.yaml: audio.input_format: provider gemini takes pcm16, got 'pcmu'"),
    ("provider: qwen\nturn_detection:\n  type: client_vad\n", r"bad.yaml: turn_detection.type: provider qwen takes server_vad or semantic_vad"),
    ("provider: glm\nvoice: alloy\n", r"bad.yaml: voice: GLM has no voice 'alloy'"),
    ("provider: glm\nturn_detection:\n  type: push_to_talk\n", r"bad.yaml: turn_detection.type: provider glm takes server_vad or client_vad, got 'push_to_talk'"),
    ("provider: glm\ntemperature: 3\n", r"bad.yaml: temperature: expected 0..1"),
    ("provider: glm\nmax_response_output_tokens: '5000'\n", r"bad.yaml: max_response_output_tokens"),
    ("provider: glm\naudio:\n  output_rate: 44100\n", r"bad.yaml: audio.output_rate"),
    ("provider: [glm\n", r"bad.yaml: not valid YAML \(line 2, column 1\)"),
    ("provider: glm\naudio:\n  input_format: pcmu\n", r"bad.yaml: audio.input_format: provider glm takes wav or"),
    ("provider: openai\naudio:\n  input_format: wav\n", r"bad.yaml: audio.input_format: provider openai takes pcmu"),
    ("provider: glm\nturn_detection:\n  type: semantic_vad\n", r"bad.yaml: turn_detection.type: provider glm"),
    ("provider: openai\nvoice: tongtong\n", r"bad.yaml: voice: OpenAI has no voice 'tongtong'"),
    ("provider: openai\nmax_response_output_tokens: '9000'\n", r"bad.yaml: max_response_output_tokens"),
    ("provider: glm\ntools: [fly]\n", r"bad.yaml: tools\[0\]: unknown built-in tool 'fly'"),
    ("provider: glm\ntools: [transfer_call]\n", r"bad.yaml: tools: transfer_call needs transfer_to"),
    ("provider: glm\ntransfer_to: '5550100'\n", r"bad.yaml: transfer_to: expected an E.164 number"),
    ("provider: glm\ndtmf:\n  shortcuts:\n    '0': dance\n", r"bad.yaml: dtmf.shortcuts.0: expected transfer"),
    ("provider: glm\ndtmf:\n  shortcuts:\n    '0': transfer\n", r"bad.yaml: dtmf.shortcuts.0: transfer needs"),
    ("provider: glm\nhttp_tools:\n  - {name: end_call, description: x, url: 'http://x'}\n",
     r"bad.yaml: http_tools\[0\].name: 'end_call' must be unique"),
    ("provider: glm\nhttp_tools:\n  - {name: t, description: x, url: 'ftp://x'}\n", r"bad.yaml: http_tools\[0\].url"),
    ("provider: glm\nhttp_tools:\n  - {name: t, description: x, url: 'http://x', parameters: {type: string}}\n",
     r"bad.yaml: http_tools\[0\].parameters: expected a JSON Schema with type: object"),
    ("provider: glm\nhttp_tools: {name: t}\n", r"bad.yaml: http_tools: expected a list"),
])
def test_persona_errors_name_file_and_field(config_dir, yaml_text, message):
    (config_dir / "bots" / "bad.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(config_dir), env={})


def test_check_config_cli_exit_codes(config_dir):
    good = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config",
                           str(write_config(config_dir))], capture_output=True, text=True, cwd=REPO)
    assert good.returncode == 0, good.stderr
    assert "bot support" in good.stdout and "no API key" in good.stdout
    (config_dir / "bots" / "bad.yaml").write_text("provider: glm\nvoicee: x\n")
    bad = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config",
                          str(write_config(config_dir))], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2
    assert "bad.yaml: voicee: unknown key" in bad.stderr
