"""`python -m gateway call`: the simulated phone (phone_sim.py) on the command line. It dials the
gateway as the chosen network's phone, speaks a WAV (or a tone) in real time, writes what it heard to
a WAV and prints a summary; Ctrl-C hangs up and still prints it (exit 130)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import wave
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from .audio import PHONE_RATE, pcm16_to_ulaw, tone
from .ids import non_negative_float
from .phone_sim import NETWORKS, DialError, SimulatedPhone, read_wav_as_ulaw, write_ulaw_as_wav
from .telephony.registry import BY_NAME


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8080",
                   help="where to reach the gateway (default: %(default)s; a TCP network such as audiosocket: "
                        "tcp://HOST:PORT)")
    p.add_argument("--public-url", default=os.environ.get("GATEWAY_PUBLIC_URL", ""), metavar="URL",
                   help="the gateway's public URL: what the network would dial, hence what is signed "
                        "(default: $GATEWAY_PUBLIC_URL, else --url)")
    p.add_argument("--network", choices=NETWORKS, default="twilio", help="which network's phone to be (default: %(default)s)")
    p.add_argument("--bot", help="persona to ask for (?bot=); default: routing by --to")
    p.add_argument("--from", dest="caller", default="+15550001111", help="caller's number (default: %(default)s)")
    p.add_argument("--to", dest="dialed", default="+15005550007",
                   help="number dialed, routed to a bot by routing.numbers (default: %(default)s)")
    p.add_argument("--wav", help="what the caller says (any PCM WAV); default: a 1.2 s 440 Hz tone")
    p.add_argument("--out", default="heard.wav", help="where to write what the caller heard (default: %(default)s)")
    p.add_argument("--wait", type=non_negative_float, default=2.0,
                   help="seconds of silence before speaking, to hear the greeting (default: %(default)s)")
    p.add_argument("--hold", type=non_negative_float, default=None,
                   help="seconds to keep listening after speaking (default: speech length + 3)")
    p.add_argument("--json", action="store_true", help="print the summary, with the call id, as JSON")
    p.add_argument("--sample-rate", type=int, choices=(8000, 16000, 24000), default=8000,
                   help="networks whose media URL picks the PCM rate (exotel, jambonz): the rate to ask for "
                        "(default: %(default)s)")
    env = "; ".join(f"--network {name}: ${':$'.join(spec.fake_caller().token_env)}"
                    for name, spec in BY_NAME.items() if spec.fake_caller().token_env)
    p.add_argument("--auth-token", default=None,
                   help=f"the network's secret to sign requests with, needed when the gateway checks (default: {env})")


def _gateway_url(url: str, transport: str) -> str:
    """--url as given, or with the scheme a bare HOST:PORT lacks; ValueError with what to write."""
    want = ("tcp",) if transport == "tcp" else ("http", "https")
    if "://" not in url:
        url = f"{want[0]}://{url}"
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:
        raise ValueError(f"--url {url}: not a port number") from None
    if parts.scheme not in want or not parts.hostname:
        example = "tcp://HOST:PORT" if transport == "tcp" else "http://HOST:PORT"
        raise ValueError(f"--url {url}: expected {example}")
    return url.rstrip("/")


def _token(args: argparse.Namespace) -> str:
    if args.auth_token is not None:
        return args.auth_token
    names = BY_NAME[args.network].fake_caller().token_env
    values = [os.environ.get(name, "") for name in names]
    return ":".join(values) if names and all(values) else ""


def _write_heard(phone: SimulatedPhone, path: str) -> None:
    if phone.pcm:  # as heard: 16-bit PCM at the network's rate
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(phone.rate)
            w.writeframes(bytes(phone.result.heard_pcm))
    else:
        write_ulaw_as_wav(path, bytes(phone.result.heard))


def _hang_up_on_ctrl_c() -> None:
    """Ctrl-C hangs the call up (the summary and heard.wav are still written); a second one stops
    at once. Installed explicitly: asyncio.run only does it when SIGINT has Python's default
    handler, and a process started with SIGINT ignored (a background job, some test runners)
    would otherwise talk on, deaf to Ctrl-C, until its --hold ran out."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()

    def first() -> None:
        loop.remove_signal_handler(signal.SIGINT)  # restores Python's handler: the next one is a KeyboardInterrupt
        task.cancel()
    try:
        loop.add_signal_handler(signal.SIGINT, first)
    except (NotImplementedError, RuntimeError):  # no signal handlers on this loop (Windows)
        pass


async def main(args: argparse.Namespace) -> int:
    _hang_up_on_ctrl_c()
    try:
        speech = read_wav_as_ulaw(args.wav) if args.wav else pcm16_to_ulaw(tone(440, 1.2, PHONE_RATE, 8000))
    except FileNotFoundError:
        print(f"error: --wav {args.wav}: no such file", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: --wav {args.wav}: {e.strerror or e}", file=sys.stderr)
        return 2
    except (wave.Error, EOFError) as e:  # not RIFF/WAVE, cut short, or not integer PCM
        print(f"error: --wav {args.wav}: not a PCM WAV file ({str(e) or 'cut short'})", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: --wav {args.wav}: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out).resolve().parent
    if Path(args.out).is_dir() or not out_dir.is_dir() or not os.access(out_dir, os.W_OK):
        print(f"error: --out {args.out}: cannot write a file there", file=sys.stderr)
        return 2
    hold = args.hold if args.hold is not None else len(speech) / PHONE_RATE + 3
    fake = BY_NAME[args.network].fake_caller()
    url = args.url
    if fake.transport == "tcp" and not url.startswith("tcp://"):
        port = os.environ.get("GATEWAY_AUDIOSOCKET_PORT", "")
        if not port.isdigit():
            print(f"error: --network {args.network} needs --url tcp://HOST:PORT (the gateway's "
                  "GATEWAY_AUDIOSOCKET_PORT)", file=sys.stderr)
            return 2
        url = f"tcp://127.0.0.1:{port}"
    try:
        url = _gateway_url(url, fake.transport)
        public = _gateway_url(args.public_url, "ws") if args.public_url else ""
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    token = _token(args)
    phone = SimulatedPhone(url, bot=args.bot, caller=args.caller, dialed=args.dialed, auth_token=token,
                           network=args.network, public_url=public, sample_rate=args.sample_rate)
    try:
        await phone.dial()
    except DialError as e:
        secret = ":".join(fake.token_env) or "the network's secret"
        hint = "" if e.status != 403 else (
            f" (the gateway checks signatures: pass --auth-token, its {secret})" if not token
            else f" (signed for {public or url}: --public-url must be the gateway's GATEWAY_PUBLIC_URL "
                 f"and --auth-token its {secret})")
        print(f"call not connected: {e}{hint}")
        return 1
    except aiohttp.ClientError as e:
        print(f"cannot reach the gateway at {url}: {e}")
        return 1
    finally:
        if phone.result.stream_url == "" and phone._session is not None:
            await phone._session.close()
    interrupted = False
    try:
        try:
            await phone.connect()
        except (aiohttp.ClientError, OSError) as e:
            print(f"call not connected: cannot open the stream {phone.result.stream_url}: {e}")
            return 1
        await phone.silence(args.wait)
        await phone.say(speech)
        await phone.silence(hold)
    except asyncio.CancelledError:  # Ctrl-C: hang up, and still say what was heard
        asyncio.current_task().uncancel()
        interrupted = True
    finally:
        if not phone.closed.is_set():
            await phone.hangup()
        await phone.close()
    _write_heard(phone, args.out)
    summary = {"call_id": phone.call_sid, **phone.result.summary(), "heard_wav": args.out,
               "spoke_seconds": round(len(speech) / PHONE_RATE, 2), **({"interrupted": True} if interrupted else {})}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"call {phone.call_sid} -> bot {summary['bot']} via {summary['stream_url']}")
        for k, v in summary.items():
            if k not in ("call_id", "stream_url", "bot"):
                print(f"  {k:24} {v}")
        for v in phone.result.violations[:10]:
            print(f"  VIOLATION {v}")
    if interrupted:
        print("interrupted: the call was hung up early", file=sys.stderr)
        return 130
    if phone.result.close_code == 1008:  # WSCloseCode.POLICY_VIOLATION
        print("the gateway refused the stream (close code 1008: signature, call token or no start; see its log)",
              file=sys.stderr)
        return 1
    return 0 if not phone.result.violations else 1
