"""The one exception type for bad input, and choose()."""
import pytest

from pipeline.errors import UserError, choose


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)
    with pytest.raises(ValueError, match="bad"):
        raise UserError("bad")


def test_choose_returns_the_name_or_lists_the_choices():
    assert choose("sampler", "ddim", ("ddim", "ddpm")) == "ddim"
    assert choose("steps", 4, range(1, 9)) == 4
    with pytest.raises(UserError) as e:
        choose("sampler", "euler", iter(["ddim", "ddpm"]))
    assert str(e.value) == "unknown sampler 'euler'; valid choices: ddim, ddpm"
