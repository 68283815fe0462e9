import socket

from gateway.telephony.audiosocket.fake import bot_uuid
from tests.networks import Profile

BOTS = ("openai-greeter", "openai-quiet", "openai-agent", "openai-pcm", "glm-quiet", "openai-confirm")


class AudioSocket(Profile):
    name = "audiosocket"
    has_marks = False
    transfer_label = "AudioSocket"
    knows_dialed = False
    sends_binary_audio = True
    text_frames = False

    async def gateway(self, make_gateway, **kw):
        with socket.socket() as s:  # a free port for the listener
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        bots = "".join(f"\n    {bot_uuid(b)}: {b}" for b in BOTS)
        return await make_gateway(env={"GATEWAY_AUDIOSOCKET_PORT": str(self.port)},
                                  extra=f"audiosocket:\n  bots:{bots}\n", **kw)

    def phone(self, gw_url, bot=None, **kw):
        return super().phone(f"tcp://127.0.0.1:{self.port}", bot, **kw)

    def bad_frames(self, phone):
        # TCP, so only well-framed faults (a broken length would swallow the stream)
        return [b"\x42\x00\x02hi", b"\x10\x00\x03abc", b"\x10\x00\x00", b"\x03\x00\x01x", b"\x03\x00\x02" + b"12",
                b"\x01\x00\x10" + bytes(16)]


PROFILE = AudioSocket
