import pytest

from pipeline.simulator.ratelimit import RateLimiter, TokenBucket, go_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "1ms"),
        (0.012, "12ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (17.28, "17.28s"),
        (59.999, "59.999s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (3600, "1h0m0s"),
        (3723.25, "1h2m3.25s"),
        (-3, "0s"),
    ],
)
def test_go_duration_formats_like_go(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_bucket_refills_continuously_at_limit_per_minute() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, clock)
    bucket.take(60)
    assert bucket.available() == 0
    clock.now += 10
    assert bucket.available() == pytest.approx(10)
    clock.now += 1000
    assert bucket.available() == 60


def test_requests_are_admitted_until_the_bucket_is_empty() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=3, tpm=None, clock=clock)
    assert [limiter.admit(1) for _ in range(3)] == [None, None, None]
    refusal = limiter.admit(1)
    assert refusal is not None
    assert (refusal.kind, refusal.limit, refusal.used, refusal.requested) == ("requests", 3, 3, 1)
    assert refusal.retry_after_s == pytest.approx(20)
    clock.now += 20
    assert limiter.admit(1) is None


def test_a_token_refusal_charges_neither_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=10, tpm=100, clock=clock)
    assert limiter.admit(80) is None
    refusal = limiter.admit(30)
    assert refusal is not None and refusal.kind == "tokens"
    assert refusal.retry_after_s == pytest.approx(6)  # 10 tokens short at 100/min
    headers = limiter.headers()
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-remaining-tokens"] == "20"


def test_headers_count_down_and_report_time_to_full() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, tpm=6000, clock=clock)
    limiter.admit(600)
    assert limiter.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "5400",
        "x-ratelimit-reset-tokens": "6s",
    }
    clock.now += 0.5
    assert limiter.headers()["x-ratelimit-reset-requests"] == "500ms"


def test_no_limits_means_no_headers_and_no_refusals() -> None:
    limiter = RateLimiter(rpm=None, tpm=None)
    assert not limiter.enabled
    assert limiter.admit(10**9) is None
    assert limiter.headers() == {}


def test_a_request_larger_than_the_limit_is_refused() -> None:
    limiter = RateLimiter(rpm=None, tpm=100, clock=FakeClock())
    refusal = limiter.admit(150)
    assert refusal is not None and refusal.requested == 150 and refusal.limit == 100


def test_a_short_window_holds_only_its_share_of_the_minute() -> None:
    """3,000/min over 1 s windows: 50 at once, then 50 a second; remaining and reset describe that bucket."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=3000, tpm=None, clock=clock, window_s=1.0)
    assert [limiter.admit(1) for _ in range(50)] == [None] * 50
    refusal = limiter.admit(1)
    assert refusal is not None
    assert (refusal.limit, refusal.used) == (3000, 50)
    assert refusal.retry_after_s == pytest.approx(0.02)
    assert limiter.headers() == {
        "x-ratelimit-limit-requests": "3000",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
    }
    clock.now += 0.1
    assert [limiter.admit(1) for _ in range(5)] == [None] * 5
    assert limiter.admit(1) is not None
    clock.now += 10
    headers = limiter.headers()
    assert (headers["x-ratelimit-remaining-requests"], headers["x-ratelimit-reset-requests"]) == ("50", "0s")


def test_a_tenth_of_a_second_window_admits_five_of_three_thousand_a_minute() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=3000, tpm=None, clock=clock, window_s=0.1)
    assert [limiter.admit(1) is None for _ in range(6)] == [True] * 5 + [False]
    limiter.admit(1)
    clock.now += 0.02
    assert limiter.admit(1) is None
    headers = limiter.headers()
    # The bucket's capacity can be read back from the headers: remaining + reset x limit / 60.
    assert (headers["x-ratelimit-remaining-requests"], headers["x-ratelimit-reset-requests"]) == ("0", "100ms")


def test_a_request_larger_than_the_window_waits_for_a_full_bucket_and_leaves_a_debt() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=6000, clock=clock, window_s=1.0)  # 100 tokens a window
    assert limiter.admit(10) is None
    refusal = limiter.admit(250)
    assert refusal is not None and refusal.retry_after_s == pytest.approx(0.1)  # until the bucket is full
    clock.now += 0.1
    assert limiter.admit(250) is None
    assert limiter.headers()["x-ratelimit-remaining-tokens"] == "0"
    assert limiter.admit(1) is not None
    clock.now += 2.5  # the debt of 150 refilled (1.5 s), then the window's 100 again (1 s)
    assert limiter.admit(100) is None


def test_a_window_longer_than_a_minute_or_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        TokenBucket(60, FakeClock(), window_s=0)
    with pytest.raises(ValueError, match="window"):
        TokenBucket(60, FakeClock(), window_s=61)
