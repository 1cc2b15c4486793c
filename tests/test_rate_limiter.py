"""The chat rate limiter (a token bucket on Trio's clock), on a clock the test moves by hand.

No ``fail_after`` here: these tests never await, so they cannot wait on anything."""

from __future__ import annotations

from trio.testing import MockClock

from rmeeting.service import RateLimiter


def _allowed(limiter: RateLimiter, tries: int) -> int:
    return sum(limiter.allow() for _ in range(tries))


async def test_burst_then_the_sustained_rate(mock_clock: MockClock) -> None:
    # rate and jumps are binary fractions: the token counts are exact
    limiter = RateLimiter(rate=4.0, burst=3)
    assert _allowed(limiter, 10) == 3  # the burst at once, then nothing
    mock_clock.jump(0.125)
    assert not limiter.allow()  # half a token's worth of time
    mock_clock.jump(0.125)
    assert limiter.allow() and not limiter.allow()  # 1/rate later: exactly one
    mock_clock.jump(10.0)
    assert _allowed(limiter, 10) == 3  # a long pause refills the burst, never more
    mock_clock.jump(10.0)
    allowed = 0
    for _ in range(40):  # 10 s, asking twice every 1/rate
        mock_clock.jump(0.25)
        allowed += _allowed(limiter, 2)
    # the full burst, then one per 1/rate; the first refill is lost to the burst's cap
    assert allowed == 3 + 40 - 1


async def test_each_limiter_has_its_own_bucket(mock_clock: MockClock) -> None:
    one, two = RateLimiter(rate=1.0, burst=1), RateLimiter(rate=1.0, burst=1)
    assert one.allow() and not one.allow()
    assert two.allow()
    mock_clock.jump(1.0)
    assert one.allow() and two.allow()
