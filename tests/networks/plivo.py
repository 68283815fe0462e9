from tests.conftest import PLIVO_ID, PLIVO_TOKEN
from tests.networks import Profile, family_faults


class Plivo(Profile):
    name = "plivo"
    transfer_label = "Plivo"

    async def start(self, tmp_path, fake_rest) -> None:
        from tests.fakes.network_rest import FakePlivoRest
        self.rest = FakePlivoRest(PLIVO_ID, PLIVO_TOKEN)
        await self.rest.start()

    def env(self) -> dict:
        return {"PLIVO_AUTH_ID": PLIVO_ID, "PLIVO_AUTH_TOKEN": PLIVO_TOKEN, "PLIVO_API_BASE": self.rest.url}

    def phone_kwargs(self) -> dict:
        return {"auth_token": PLIVO_TOKEN}

    def bad_frames(self, phone):
        return family_faults(phone, "streamId", mark={"event": "playedStream", "streamId": phone.stream_sid})


PROFILE = Plivo
