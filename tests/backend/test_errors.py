"""Backend errors cross process boundaries whole (a cluster worker's error reaches the server's caller)."""

import pickle

from backend import errors


def test_every_backend_error_survives_pickling_with_its_fields():
    samples = [errors.InvalidRequest("controlnet.args[0].model", "is for SDXL")]
    samples += [cls("why") for cls in vars(errors).values()
                if isinstance(cls, type) and issubclass(cls, errors.BackendError) and cls is not errors.InvalidRequest]
    for err in samples:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
    back = pickle.loads(pickle.dumps(samples[0]))
    assert (back.field, back.message) == ("controlnet.args[0].model", "is for SDXL")
