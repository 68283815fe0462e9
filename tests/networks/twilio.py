from tests.conftest import TWILIO_TOKEN
from tests.networks import Profile, family_faults


class Twilio(Profile):
    name = "twilio"

    async def start(self, tmp_path, fake_rest) -> None:
        self.rest = fake_rest  # the conftest fixture stops it

    async def stop(self) -> None:
        pass

    async def gateway(self, make_gateway, **kw):
        return await make_gateway(rest=self.rest, **kw)

    def phone_kwargs(self) -> dict:
        return {"auth_token": TWILIO_TOKEN}

    def hang_ups(self, phone):
        return [(r.call_sid, r.at) for r in self.rest.requests if r.form.get("Status") == "completed"]

    def check_transfer(self, phone) -> None:
        assert "<Number>+15550008888</Number>" in self.rest.requests[0].form["Twiml"]

    def bad_frames(self, phone):
        return family_faults(phone, "streamSid", other_stream=False)


PROFILE = Twilio
