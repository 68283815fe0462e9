from tests.conftest import EXOTEL_KEY, EXOTEL_TOKEN
from tests.networks import Profile, family_faults


class Exotel(Profile):
    name = "exotel"
    min_marks = 7  # chunks of at least 3.2 KB: 200 ms of 8 kHz PCM16
    transfer_label = "Exotel"

    def env(self) -> dict:
        return {"EXOTEL_API_KEY": EXOTEL_KEY, "EXOTEL_API_TOKEN": EXOTEL_TOKEN}

    def phone_kwargs(self) -> dict:
        return {"auth_token": f"{EXOTEL_KEY}:{EXOTEL_TOKEN}"}

    def bad_frames(self, phone):
        return family_faults(phone, "stream_sid")


PROFILE = Exotel
