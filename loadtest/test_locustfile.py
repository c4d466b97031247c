"""Unit tests for locustfile.py: the tweet generator, the answer check, the ledger and the burst schedule.

Run with ``python -m pytest loadtest/test_locustfile.py``; no server is needed.
"""

import io
import json
import random
from types import SimpleNamespace

import pytest

from locustfile import (
    COUNTRIES,
    PHRASES,
    PLACES,
    BurstPlan,
    BurstShape,
    Ledger,
    answered_id,
    close_ledger,
    configure_shape,
    make_tweet,
    open_ledger,
    rejection_reason,
    tweet_country,
)

CLIMAS = {"soleado", "nublado", "lluvioso", "tormenta", "nevado", "niebla", "ventoso"}
MAX_TEXT = 280
MAX_COUNTRY = 56


def sample_tweets(count=3000, seed=1234):
    rng = random.Random(seed)
    return [make_tweet(rng) for _ in range(count)]


def test_tweets_have_valid_fields():
    for tweet in sample_tweets():
        country_keys = {"pais", "país"} & tweet.keys()
        assert len(country_keys) == 1, tweet
        assert set(tweet) <= {"texto", "clima"} | country_keys, tweet
        country = tweet[country_keys.pop()]
        assert 0 < len(country) <= MAX_COUNTRY
        assert 0 < len(tweet["texto"].strip()) <= MAX_TEXT
        if "clima" in tweet:
            assert tweet["clima"] in CLIMAS


def test_tweets_mix_optional_clima_and_both_country_keys():
    tweets = sample_tweets()
    assert any("clima" in t for t in tweets)
    assert any("clima" not in t for t in tweets)
    assert any("pais" in t for t in tweets)
    assert any("país" in t for t in tweets)
    assert {t["clima"] for t in tweets if "clima" in t} == CLIMAS


def test_clima_matches_the_phrase_it_came_from():
    for tweet in sample_tweets():
        if "clima" in tweet:
            country = tweet.get("pais", tweet.get("país"))
            texts = {p.format(lugar=place) for p in PHRASES[tweet["clima"]] for place in (*PLACES, country)}
            assert tweet["texto"] in texts


def test_phrase_catalogue_covers_every_clima_with_ten_place_templates():
    assert set(PHRASES) == CLIMAS
    for templates in PHRASES.values():
        assert len(templates) >= 10
        assert all("{lugar}" in t for t in templates)


def test_every_possible_text_and_country_fits_the_limits():
    assert all(0 < len(c) <= MAX_COUNTRY for c in COUNTRIES)
    for templates in PHRASES.values():
        for template in templates:
            for place in PLACES + COUNTRIES:
                assert len(template.format(lugar=place)) <= MAX_TEXT


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (202, '{"id": "abc"}', None),
        (202, '{"id": ""}', '202 without an "id"'),
        (202, "{}", '202 without an "id"'),
        (202, "accepted", "202 with a body that is not JSON"),
        (200, '{"id": "abc"}', "expected 202, got 200"),
        (500, None, "expected 202, got 500"),
    ],
)
def test_rejection_reason(status, body, expected):
    assert rejection_reason(status, body) == expected


def test_rejection_reason_without_http_answer_names_the_error():
    reason = rejection_reason(0, None, ConnectionRefusedError("refused"))
    assert reason.startswith("no HTTP answer") and "refused" in reason


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"id": "abc"}', "abc"),
        ('{"outcome": "unknown", "id": "def"}', "def"),
        ('{"error": "Kafka is unavailable"}', None),
        ('{"id": ""}', None),
        ('{"id": 7}', None),
        ('["abc"]', None),
        ("Service Unavailable", None),
        (None, None),
    ],
)
def test_answered_id(body, expected):
    assert answered_id(body) == expected


def test_tweet_country_reads_either_key():
    assert tweet_country({"texto": "x", "pais": "Chile"}) == "Chile"
    assert tweet_country({"texto": "x", "país": "Perú"}) == "Perú"


def test_ledger_writes_one_json_line_per_request():
    stream = io.StringIO()
    ledger = Ledger(stream)
    ledger.record("Perú", 202, '{"id": "abc"}')
    ledger.record("Chile", 503, '{"error": "Kafka is unavailable"}')
    ledger.record("Chile", 504, '{"outcome": "unknown", "id": "def"}')
    ledger.record("México", 0, None)
    assert stream.getvalue().count("\n") == 4
    assert "Perú" in stream.getvalue(), "country names written as they are, not escaped"
    assert [json.loads(line) for line in stream.getvalue().splitlines()] == [
        {"id": "abc", "country": "Perú", "status": 202},
        {"id": None, "country": "Chile", "status": 503},
        {"id": "def", "country": "Chile", "status": 504},
        {"id": None, "country": "México", "status": 0},
    ]


def test_ledger_file_is_opened_from_the_option_and_closed_on_quit(tmp_path):
    path = tmp_path / "ledger.jsonl"
    environment = SimpleNamespace(parsed_options=SimpleNamespace(ledger_file=str(path)))
    open_ledger(environment)
    environment.weather_ledger.record("Chile", 202, '{"id": "abc"}')
    close_ledger(environment)
    assert environment.weather_ledger is None
    assert json.loads(path.read_text(encoding="utf-8")) == {"id": "abc", "country": "Chile", "status": 202}


def test_no_ledger_without_the_option():
    environment = SimpleNamespace(parsed_options=SimpleNamespace(ledger_file=""))
    open_ledger(environment)
    assert environment.weather_ledger is None
    close_ledger(environment)


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (0, (50, 50.0)),
        (19.9, (50, 50.0)),
        (20, (0, 50.0)),
        (29.9, (0, 50.0)),
        (30, (50, 50.0)),
        (49.9, (50, 50.0)),
        (50, None),
        (3600, None),
    ],
)
def test_default_schedule_is_two_20s_bursts_with_a_10s_gap(elapsed, expected):
    assert BurstPlan().schedule(elapsed) == expected


def test_single_burst_has_no_trailing_gap():
    plan = BurstPlan(users=5, spawn_rate=2.5, burst_seconds=3, gap_seconds=1, bursts=1)
    assert plan.total_seconds == 3
    assert plan.schedule(2.99) == (5, 2.5)
    assert plan.schedule(3) is None


def test_zero_gap_makes_bursts_back_to_back():
    plan = BurstPlan(users=10, burst_seconds=5, gap_seconds=0, bursts=3)
    assert [plan.schedule(t) for t in (0, 5, 10, 14.9)] == [(10, 50.0)] * 4
    assert plan.schedule(15) is None


def test_zero_bursts_schedule_nothing():
    assert BurstPlan(bursts=0).schedule(0) is None


@pytest.mark.parametrize(
    "field",
    [
        {"users": 0},
        {"spawn_rate": 0},
        {"burst_seconds": 0},
        {"gap_seconds": -1},
        {"bursts": -1},
    ],
)
def test_invalid_plans_are_rejected(field):
    with pytest.raises(ValueError):
        BurstPlan(**field)


class ClockedShape(BurstShape):
    """BurstShape whose run time comes from a settable clock instead of perf_counter."""

    def __init__(self, plan):
        super().__init__(plan)
        self.now = 0.0

    def get_run_time(self):
        return self.now


def test_shape_tick_follows_the_plan_at_its_run_time():
    shape = ClockedShape(BurstPlan(users=7, spawn_rate=7, burst_seconds=2, gap_seconds=3, bursts=2))
    seen = []
    for second in range(9):
        shape.now = second
        seen.append(shape.tick())
    assert seen == [(7, 7), (7, 7), (0, 7), (0, 7), (0, 7), (7, 7), (7, 7), None, None]


def options(**overrides):
    values = {
        "burst_users": 3,
        "burst_spawn_rate": 3.0,
        "burst_seconds": 4.0,
        "gap_seconds": 1.0,
        "bursts": 2,
        "user_rps": 0.0,
        "num_users": None,
        "spawn_rate": None,
        "run_time": None,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def test_configure_shape_applies_the_options():
    environment = SimpleNamespace(parsed_options=options(), shape_class=BurstShape())
    configure_shape(environment)
    assert environment.shape_class.plan == BurstPlan(
        users=3, spawn_rate=3.0, burst_seconds=4.0, gap_seconds=1.0, bursts=2
    )


def test_configure_shape_drops_the_shape_when_bursts_is_zero():
    environment = SimpleNamespace(parsed_options=options(bursts=0, num_users=10), shape_class=BurstShape())
    configure_shape(environment)
    assert environment.shape_class is None


def test_configure_shape_rejects_a_negative_user_rps():
    environment = SimpleNamespace(parsed_options=options(user_rps=-1.0), shape_class=BurstShape())
    with pytest.raises(ValueError):
        configure_shape(environment)
