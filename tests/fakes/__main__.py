"""Run the fake model servers standalone, for a demo or a manual check without real keys.

    VENV_EXTRAS='[test]' scripts/python -m tests.fakes [--glm-port 9101] [--openai-port 9102] [--qwen-port 9103]
                                                         [--gemini-port 9104]

Prints the environment to give `scripts/serve` so that GLM, OpenAI, Qwen and Gemini personas talk
to the fakes.
The fakes answer speech with a tone and greet with a tone; they accept only the keys printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os

try:
    from tests.conftest import GEMINI_KEY, GLM_KEY, OPENAI_KEY, QWEN_KEY
    from tests.fakes.gemini_server import FakeGemini
    from tests.fakes.glm_server import FakeGLM
    from tests.fakes.openai_server import FakeOpenAI
    from tests.fakes.qwen_server import FakeQwen
except ModuleNotFoundError as e:  # a venv made by scripts/serve has the gateway's packages only
    raise SystemExit(f"error: the fake model servers need the test packages ({e.name} is not installed): "
                     "VENV_EXTRAS='[test]' scripts/python -m tests.fakes") from None


async def main(args: argparse.Namespace) -> None:
    glm, openai = FakeGLM(api_key=GLM_KEY), FakeOpenAI(api_key=OPENAI_KEY)
    qwen, gemini = FakeQwen(api_key=QWEN_KEY), FakeGemini(api_key=GEMINI_KEY)
    fakes = [(glm, args.glm_port, "--glm-port"), (openai, args.openai_port, "--openai-port"),
             (qwen, args.qwen_port, "--qwen-port"), (gemini, args.gemini_port, "--gemini-port")]
    for i, (fake, port, flag) in enumerate(fakes):
        try:
            await fake.start(port=port)
        except OSError as e:  # a port in use (another run of the fakes?) is one line, not a traceback
            for started, _, _ in fakes[:i]:
                await started.stop()
            why = os.strerror(e.errno).lower() if e.errno else str(e)
            raise SystemExit(f"error: cannot listen on 127.0.0.1:{port}: {why} "
                             f"(choose another with {flag})") from None
    print("fake models running; start the gateway with:\n"
          f"  ZHIPU_API_KEY={GLM_KEY} GLM_REALTIME_URL={glm.url} \\\n"
          f"  OPENAI_API_KEY={OPENAI_KEY} OPENAI_REALTIME_URL='{openai.url}' \\\n"
          f"  DASHSCOPE_API_KEY={QWEN_KEY} QWEN_REALTIME_URL={qwen.url} \\\n"
          f"  GEMINI_API_KEY={GEMINI_KEY} GEMINI_LIVE_URL={gemini.url} scripts/serve", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for fake, _ in fakes:
            await fake.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m tests.fakes", description=__doc__.splitlines()[0])
    p.add_argument("--glm-port", type=int, default=9101)
    p.add_argument("--openai-port", type=int, default=9102)
    p.add_argument("--qwen-port", type=int, default=9103)
    p.add_argument("--gemini-port", type=int, default=9104)
    try:
        asyncio.run(main(p.parse_args()))
    except KeyboardInterrupt:
        pass
