from nvrd.ratelimit import FailureLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tenth_failure_in_the_window_blocks_that_address_only() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock=clock)
    for _ in range(9):
        assert limiter.failure("10.0.0.1") is None
        clock.now += 1
    assert limiter.retry_after("10.0.0.1") is None
    assert limiter.failure("10.0.0.1") == 60
    assert limiter.retry_after("10.0.0.1") == 60
    assert limiter.retry_after("10.0.0.2") is None


def test_failures_spread_beyond_the_window_never_block() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock=clock)
    for _ in range(30):
        assert limiter.failure("a") is None
        clock.now += 34  # any 10 failures span more than 300 s
    assert limiter.retry_after("a") is None


def test_blocks_grow_while_failures_continue_and_are_capped() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock=clock, max_block_s=200)
    blocks = []
    for _ in range(4):
        clock.now += 1000 if not blocks else blocks[-1]
        for _ in range(9):
            limiter.failure("a")
        blocks.append(limiter.failure("a"))
        clock.now -= 0  # failures resume as soon as the block ends
    assert blocks[:3] == [60, 120, 200] and blocks[3] == 200


def test_block_ends_then_a_quiet_window_forgives() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock=clock)
    for _ in range(10):
        limiter.failure("a")
    clock.now += 61
    assert limiter.retry_after("a") is None
    clock.now += 400
    for _ in range(9):
        limiter.failure("a")
    assert limiter.failure("a") == 60  # back to the first step


def test_tracked_addresses_are_bounded() -> None:
    limiter = FailureLimiter(clock=Clock(), max_addresses=5)
    for i in range(100):
        limiter.failure(f"10.0.0.{i}")
    assert len(limiter._addresses) == 5
