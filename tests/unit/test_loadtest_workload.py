"""The load generator's workload: the feature mix it parses and how it picks customers and features."""

from __future__ import annotations

from collections import Counter

import pytest
from creditgate.server.errors import InvalidArgument
from creditgate.server.loadtest.workload import CustomerPicker, FeatureChoice, MixPicker, parse_mix

MIXES = [
    ("email_unlock:60", [FeatureChoice("email_unlock", (), 60)]),
    (
        "mobile_unlock[quality=verified]:10,contact_export*5:30",
        [FeatureChoice("mobile_unlock", (("quality", "verified"),), 10), FeatureChoice("contact_export", (), 30, 5)],
    ),
]


@pytest.mark.parametrize(("text", "choices"), MIXES, ids=[case[0] for case in MIXES])
def test_a_mix_is_parsed_and_labelled_as_written(text: str, choices: list[FeatureChoice]) -> None:
    parsed = parse_mix(text)
    assert parsed == choices
    assert ",".join(f"{choice.label()}:{choice.weight}" for choice in parsed) == text


@pytest.mark.parametrize("text", ["", "email_unlock", "email_unlock:0", "email_unlock:x"])
def test_a_malformed_mix_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_mix(text)


def test_features_are_picked_in_proportion_to_their_weights() -> None:
    picker = MixPicker([FeatureChoice("a", (), 3), FeatureChoice("b", (), 1)], seed=1)
    picks = Counter(picker.pick() for _ in range(20_000))
    assert set(picks) == {0, 1}
    assert 0.73 < picks[0] / 20_000 < 0.77


def test_uniform_customers_are_all_picked_about_equally() -> None:
    picker = CustomerPicker(10, skew=0.0, seed=1)
    picks = Counter(picker.pick() for _ in range(20_000))
    assert sorted(picks) == list(range(10))
    assert all(1_800 < count < 2_200 for count in picks.values())


def test_zipf_skew_makes_the_first_customers_hot() -> None:
    picker = CustomerPicker(1_000, skew=1.1, seed=1)
    picks = Counter(picker.pick() for _ in range(20_000))
    assert all(0 <= index < 1_000 for index in picks)
    # Zipf(1.1) over 1,000: the first customer takes 17.9% of the calls, the first ten 48.1%.
    assert 0.165 < picks[0] / 20_000 < 0.195
    assert 0.46 < sum(picks[index] for index in range(10)) / 20_000 < 0.50
