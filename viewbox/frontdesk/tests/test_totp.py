import pytest

from viewbox.frontdesk import totp

# The 20-byte ASCII key of RFC 6238 appendix B, in base32.
RFC_SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


class TestCodeAtStep:
    # RFC 6238 appendix B, SHA1 column: Unix time and the 8-digit code.
    @pytest.mark.parametrize(
        ("unix_time", "expected"),
        [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ],
    )
    def test_rfc_6238_vectors(self, unix_time: int, expected: str) -> None:
        step = totp.time_step(unix_time)
        assert totp.code_at_step(RFC_SECRET, step, digits=8) == expected

    def test_six_digits_are_the_last_six(self) -> None:
        assert totp.code_at_step(RFC_SECRET, totp.time_step(59)) == "287082"


class TestMatchingStep:
    def test_code_two_steps_old_is_rejected(self) -> None:
        now = 1234567890
        old = totp.code_at_step(RFC_SECRET, totp.time_step(now) - 2)
        assert totp.matching_step(RFC_SECRET, old, now) is None

    def test_code_two_steps_ahead_is_rejected(self) -> None:
        now = 1234567890
        ahead = totp.code_at_step(RFC_SECRET, totp.time_step(now) + 2)
        assert totp.matching_step(RFC_SECRET, ahead, now) is None

    def test_letters_are_rejected(self) -> None:
        assert totp.matching_step(RFC_SECRET, "12a456", 1234567890) is None

    @pytest.mark.parametrize("offset", [-1, 0, 1])
    def test_neighbouring_steps_are_accepted(self, offset: int) -> None:
        now = 1234567890
        step = totp.time_step(now) + offset
        code = totp.code_at_step(RFC_SECRET, step)
        assert totp.matching_step(RFC_SECRET, code, now) == step

    def test_spaces_are_ignored(self) -> None:
        now = 1234567890
        code = totp.code_at_step(RFC_SECRET, totp.time_step(now))
        assert totp.matching_step(RFC_SECRET, f"{code[:3]} {code[3:]}", now) is not None


class TestSecret:
    def test_secret_holds_160_bits(self) -> None:
        secret = totp.generate_secret()
        assert len(secret) == 32
        assert totp.generate_secret() != secret

    def test_provisioning_uri_names_the_parameters(self) -> None:
        uri = totp.provisioning_uri(RFC_SECRET, "rita", "Viewbox staff")
        assert uri.startswith("otpauth://totp/Viewbox%20staff%3Arita?")
        assert "digits=6" in uri
        assert "period=30" in uri
