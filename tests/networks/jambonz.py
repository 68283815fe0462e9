from tests.networks import Profile

SECRET, API_KEY = "jambonz-webhook-secret-fake-0123", "jambonz-api-key-fake-0123"


class Jambonz(Profile):
    name = "jambonz"
    has_marks = False  # the gateway paces its audio and emulates marks
    transfer_label = "jambonz"
    sends_binary_audio = True

    async def start(self, tmp_path, fake_rest) -> None:
        from tests.fakes.jambonz_rest import FakeJambonzRest
        self.rest = FakeJambonzRest(API_KEY)
        await self.rest.start()

    def env(self) -> dict:
        return {"JAMBONZ_WEBHOOK_SECRET": SECRET, "JAMBONZ_API_KEY": API_KEY, "JAMBONZ_API_BASE": self.rest.url}

    def phone_kwargs(self) -> dict:
        return {"auth_token": SECRET}

    def bad_frames(self, phone):
        return ['{"event": "dtmf"}', b"odd", b""]


PROFILE = Jambonz
