"""Command line: `python -m gateway serve | call | check-config | calls`."""

from __future__ import annotations

import signal
import sys


_interrupted = False  # Ctrl-C came while the modules below were loading


def _interrupted_while_loading(signum, frame) -> None:
    global _interrupted
    _interrupted = True


if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    # Ctrl-C in the ~0.4 s the modules below take to load: noted, and main() exits 130 quietly
    # once they are loaded, instead of a KeyboardInterrupt traceback from deep inside an import.
    # Not raised from here: an exception while a C extension initialises can crash the interpreter
    # (3.13 died of SIGSEGV inside orjson's import). Only where Ctrl-C is on at all: a shell starts
    # background jobs with SIGINT ignored, and so it stays.
    signal.signal(signal.SIGINT, _interrupted_while_loading)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

from . import speedups  # noqa: E402
from .calllog.store import StoreError  # noqa: E402
from .config import ConfigError, load_config  # noqa: E402
from .logs import setup_logging  # noqa: E402


def _serve(args: argparse.Namespace) -> int:
    from .app import ListenError, listen, serve

    config = load_config(args.config)
    setup_logging(config.logging.level, config.logging.format, config.secrets())
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    supervised = False
    if args.reuse_port:  # a worker of `serve --workers N`
        from .workers import follow_supervisor
        supervised = follow_supervisor()
    try:
        # Before anything else: a second gateway stops here. Workers share the port (SO_REUSEPORT).
        if args.workers > 1 and port:
            # SO_REUSEPORT would bind beside another supervisor's workers (even orphaned ones): a
            # plain bind first finds the port in use.
            for sock in listen(host, port):
                sock.close()
        socks = listen(host, port, reuse_port=args.workers > 1 or args.reuse_port)
    except ListenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    log = logging.getLogger("gateway")
    default = config.bots[config.routing.default_bot]
    if not config.provider_ready(default):
        log.warning("default bot %r has no API key for provider %r: calls that no number or ?bot= "
                    "routes go to %r", default.name, default.provider, config.routing.fallback_bot)
    for name, persona in sorted(config.bots.items()):
        log.info("bot %s: provider=%s model=%s %s", name, persona.provider, persona.model,
                 "ready" if config.provider_ready(persona) else "UNAVAILABLE (no API key)")
    if not config.server.public_url:
        log.warning("server.public_url / GATEWAY_PUBLIC_URL not set: stream URLs are derived from the "
                    "webhook's Host header")
    if args.workers > 1:
        from .workers import supervise
        return supervise(args.workers, args.config, host, socks)
    log.info("event loop: %s, JSON: %s", "uvloop" if speedups.loop_factory() else "asyncio", speedups.JSON_LIBRARY)
    try:
        speedups.run(serve(config, host, port, socks, supervised=supervised))
    except ListenError as e:  # another gateway took the port in the same instant
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"{config.path}: OK")
    for name, p in sorted(config.bots.items()):
        state = "ready" if config.provider_ready(p) else f"no API key for {p.provider} (calls to it are refused)"
        print(f"  bot {name}: provider={p.provider} model={p.model} voice={p.voice or '-'}: {state}")
    for number, bot in sorted(config.routing.numbers.items()):
        print(f"  route {number} -> {bot}")
    print(f"  default bot: {config.routing.default_bot} (fallback {config.routing.fallback_bot})")
    return 0


def _call(args: argparse.Namespace) -> int:
    try:
        from .phone_cli import main as phone_main
        return asyncio.run(phone_main(args))
    except (KeyboardInterrupt, asyncio.CancelledError):  # before the call was up (a call ends with its summary)
        print("interrupted", file=sys.stderr)
        return 130


def _calls(args: argparse.Namespace) -> int:
    from .calls_cli import run
    try:
        return run(args)
    except ValueError as e:  # a bad --since/--until, or an unsupported storage URL
        print(f"error: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    config_help = "the gateway's config file; personas are in its bots_dir (default: %(default)s)"
    s = sub.add_parser("serve", help="run the gateway", description="Run the gateway until SIGTERM/SIGINT.")
    s.add_argument("--config", default="config.yaml", metavar="PATH", help=config_help)
    s.add_argument("--host", help="address to listen on (default: the config's server.host, else 127.0.0.1; "
                                  "0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, help="port to listen on (default: the config's server.port, else 8080)")
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="gateway processes sharing the port, one per core is a good start (default: %(default)s)")
    s.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # a worker of --workers
    s.set_defaults(func=_serve)

    c = sub.add_parser("check-config", help="validate config.yaml and bots/*.yaml",
                       description="Validate the config and every persona; exit 2 naming the first problem.")
    c.add_argument("--config", default="config.yaml", metavar="PATH", help=config_help)
    c.set_defaults(func=_check_config)

    from .phone_cli import add_arguments
    p = sub.add_parser("call", help="simulated phone: call the gateway like Twilio does")
    add_arguments(p)
    p.set_defaults(func=_call)

    from .calls_cli import add_arguments as add_calls_arguments
    k = sub.add_parser("calls", help="the call log: list, show ID, export")
    add_calls_arguments(k)
    k.set_defaults(func=_calls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = Path(getattr(args, "config", None) or "config.yaml")
    if hasattr(args, "config") and not config.exists():
        if str(config) != "config.yaml":  # a path the user typed: a typo must not mean "defaults"
            print(f"error: config file {config} not found", file=sys.stderr)
            return 2
        if not (config.resolve().parent / "bots").is_dir():
            # Without a config file the defaults want ./bots: say what is really missing.
            print(f"error: no {config.name} in {config.resolve().parent}; pass --config PATH", file=sys.stderr)
            return 2
    if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # loaded: KeyboardInterrupt as usual
        if _interrupted:
            return 130
    try:
        status = args.func(args)
        sys.stdout.flush()  # a reader that left early (`| head`) shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        # Like other Unix tools: stop quietly. Standard output goes to /dev/null so that the
        # interpreter's last flush has nowhere to fail ("Exception ignored ... BrokenPipeError").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except StoreError as e:  # the call log's database is unreachable or too new (serve, calls)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
