import math
import re

from viewbox.access import codes


class TestGeneratedCodes:
    def test_code_is_four_groups_of_four(self) -> None:
        assert re.fullmatch(r"[A-Z0-9]{4}(-[A-Z0-9]{4}){3}", codes.generate_code())

    def test_code_has_at_least_64_random_bits(self) -> None:
        assert codes.LENGTH * math.log2(len(codes.ALPHABET)) >= 64

    def test_alphabet_has_no_look_alikes(self) -> None:
        for symbol in "0O1IL":
            assert symbol not in codes.ALPHABET

    def test_codes_differ(self) -> None:
        assert len({codes.generate_code() for _ in range(1000)}) == 1000


class TestNormalizeCode:
    def test_any_case_and_separators_are_accepted(self) -> None:
        assert codes.normalize_code("7kq4 m2xd-9rtb_hw3f") == "7KQ4M2XD9RTBHW3F"

    def test_look_alike_symbol_is_rejected(self) -> None:
        assert codes.normalize_code("7KQ4-M2XD-9RTB-HW30") is None

    def test_wrong_length_is_rejected(self) -> None:
        assert codes.normalize_code("7KQ4-M2XD-9RTB") is None


class TestHashCode:
    def test_hash_depends_on_the_key(self, settings) -> None:
        first = codes.hash_code("7KQ4M2XD9RTBHW3F")
        settings.ICODE_HASH_KEY = "another key"
        assert codes.hash_code("7KQ4M2XD9RTBHW3F") != first

    def test_hash_does_not_contain_the_code(self) -> None:
        assert "7KQ4M2XD9RTBHW3F" not in codes.hash_code("7KQ4M2XD9RTBHW3F")
