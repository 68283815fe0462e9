import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import TELNYX_KEY
from tests.networks import Profile, family_faults


class Telnyx(Profile):
    name = "telnyx"

    async def start(self, tmp_path, fake_rest) -> None:
        from tests.fakes.network_rest import FakeTelnyxRest
        self.signing_key = Ed25519PrivateKey.generate()
        self.rest = FakeTelnyxRest(TELNYX_KEY)
        await self.rest.start()

    def env(self) -> dict:
        public = self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"TELNYX_API_KEY": TELNYX_KEY, "TELNYX_API_BASE": self.rest.url,
                "TELNYX_PUBLIC_KEY": base64.b64encode(public).decode()}

    def phone_kwargs(self) -> dict:
        return {"signing_key": self.signing_key}

    def check_transfer(self, phone) -> None:
        r = self.rest.requests[0]
        assert (r.action, r.call_id) == ("transfer", phone.call_sid)
        assert r.body == {"to": "+15550008888", "from": "+15005550006", "timeout_secs": 30}

    def bad_frames(self, phone):
        return family_faults(phone, "stream_id")


PROFILE = Telnyx
