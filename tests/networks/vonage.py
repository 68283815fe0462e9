from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from tests.conftest import VONAGE_APP, VONAGE_SECRET
from tests.networks import Profile


class Vonage(Profile):
    name = "vonage"
    transfer_label = "Vonage"
    sends_binary_audio = True

    async def start(self, tmp_path, fake_rest) -> None:
        from tests.fakes.network_rest import FakeVonageRest
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_path = tmp_path / "private.key"
        self.key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        self.rest = FakeVonageRest(VONAGE_APP, key.public_key().public_bytes(Encoding.PEM,
                                                                             PublicFormat.SubjectPublicKeyInfo))
        await self.rest.start()

    def env(self) -> dict:
        return {"VONAGE_APPLICATION_ID": VONAGE_APP, "VONAGE_PRIVATE_KEY": str(self.key_path),
                "VONAGE_SIGNATURE_SECRET": VONAGE_SECRET, "VONAGE_API_BASE": self.rest.url}

    def phone_kwargs(self) -> dict:
        return {"auth_token": VONAGE_SECRET}

    def bad_frames(self, phone):
        return ['{"event": "websocket:notify", "payload": {}}', '{"event": "websocket:dtmf"}', b"odd", b""]


PROFILE = Vonage
