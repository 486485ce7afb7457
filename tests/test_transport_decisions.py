"""The request path's decision step, with no sockets and no clock: outcome in, decision out.

The same rules run over real loopback HTTP in tests/test_http.py and tests/test_start.py;
here each one is a line.
"""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import attrs
import pytest
from yarl import URL

from copyai_async import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    InvalidResponseError,
    ProxyError,
    RateLimitError,
    ServerError,
)
from copyai_async._http import Exchange, Failure, Sender
from copyai_async._proxy import choose_proxy
from copyai_async._retry import (
    Answered,
    Dropped,
    Expire,
    Fate,
    OutcomeUnknown,
    Pause,
    Raise,
    Refused,
    Retry,
    RetryConfig,
    RetryPolicy,
    Return,
    Unreadable,
)

CONFIG = RetryConfig(max_retries=2, backoff_base=0.5, backoff_max=8.0, max_retry_after=60.0)


class _Fixed(random.Random):
    """Jitter that always picks the top of the range: backoffs are known exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


def policy(*, idempotent: bool, config: RetryConfig = CONFIG) -> RetryPolicy:
    return RetryPolicy(config=config, idempotent=idempotent, rng=_Fixed())


GET = policy(idempotent=True)
POST = policy(idempotent=False)


def status(code: int, retry_after: float | None = None) -> Refused:
    cls = {429: RateLimitError}.get(code) or (ServerError if code >= 500 else BadRequestError)
    kwargs: dict[str, Any] = {"retry_after": retry_after} if code == 429 else {}
    error = cls(f"POST /x -> {code}", method="POST", path="/x", status=code, **kwargs)
    return Refused(status=code, error=error, retry_after=retry_after)


def dropped(fate: Fate, cls: type[APIConnectionError] = APIConnectionError) -> Dropped:
    return Dropped(error=cls("POST /x: failed", method="POST", path="/x"), fate=fate, why="X")


def unreadable() -> Unreadable:
    return Unreadable(InvalidResponseError("GET /x -> 200", method="GET", path="/x", status=200))


def lost(decision: object) -> OutcomeUnknown:
    assert isinstance(decision, Raise), decision
    assert isinstance(decision.error, OutcomeUnknown), decision.error
    return decision.error


# -- an answer ------------------------------------------------------------------------------


def test_an_answer_is_returned() -> None:
    assert GET.decide(1, Answered({"a": 1})) == Return({"a": 1})
    assert POST.decide(3, Answered("run")) == Return("run")


def test_an_answer_is_returned_even_at_the_deadline() -> None:
    assert GET.decide(1, Answered(1), time_left=-1.0) == Return(1)


# -- statuses -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
def test_a_read_is_retried_after_backoff_on_a_retryable_status(code: int) -> None:
    outcome = status(code)
    assert GET.decide(1, outcome) == Retry(after=0.5, error=outcome.error, why=str(code))
    assert GET.decide(2, outcome) == Retry(after=1.0, error=outcome.error, why=str(code))


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422, 301, 407])
def test_other_statuses_are_raised_at_once(code: int) -> None:
    outcome = status(code)
    assert GET.decide(1, outcome) == Raise(outcome.error)
    assert POST.decide(1, outcome) == Raise(outcome.error)


def test_a_429_with_retry_after_pauses_the_client_for_exactly_that() -> None:
    outcome = status(429, retry_after=2.5)
    assert GET.decide(1, outcome) == Pause(after=2.5, error=outcome.error, why="429")
    # A 429 was refused before the server acted: a start waits the same way.
    assert POST.decide(1, outcome) == Pause(after=2.5, error=outcome.error, why="429")


def test_a_503_with_retry_after_waits_exactly_that_without_pausing_the_client() -> None:
    outcome = status(503, retry_after=4.0)
    assert GET.decide(1, outcome) == Retry(after=4.0, error=outcome.error, why="503")


def test_a_retry_after_longer_than_allowed_is_raised_at_once() -> None:
    for code in (429, 503):
        outcome = status(code, retry_after=61.0)
        assert GET.decide(1, outcome) == Raise(outcome.error)
    too_long = status(429, retry_after=61.0)
    assert POST.decide(1, too_long) == Raise(too_long.error)
    at_the_limit = status(429, retry_after=60.0)
    assert isinstance(GET.decide(1, at_the_limit), Pause)


def test_a_zero_retry_after_is_an_immediate_retry() -> None:
    outcome = status(429, retry_after=0.0)
    assert GET.decide(1, outcome) == Pause(after=0.0, error=outcome.error, why="429")


@pytest.mark.parametrize("code", [408, 429])
def test_a_post_refused_before_the_server_acted_is_sent_again(code: int) -> None:
    outcome = status(code)
    assert POST.decide(1, outcome) == Retry(after=0.5, error=outcome.error, why=str(code))


@pytest.mark.parametrize("code", [500, 502, 503])
def test_a_post_answered_5xx_is_never_sent_again_blind(code: int) -> None:
    outcome = status(code, retry_after=1.0 if code == 503 else None)
    unknown = lost(POST.decide(1, outcome))
    assert unknown.error is outcome.error
    assert unknown.attempt == 1
    assert not unknown.in_progress
    assert unknown.retry_after == (1.0 if code == 503 else None)
    assert unknown.status == code


def test_a_post_answered_504_may_still_be_in_progress() -> None:
    assert lost(POST.decide(2, status(504))).in_progress
    assert lost(POST.decide(2, status(504))).attempt == 2


def test_the_api_error_envelope_on_a_2xx_is_raised() -> None:
    error = BadRequestError("GET /x -> 200 BAD", method="GET", path="/x", status=200)
    assert GET.decide(1, Refused(status=200, error=error)) == Raise(error)
    assert POST.decide(1, Refused(status=200, error=error)) == Raise(error)


# -- connection failures --------------------------------------------------------------------


@pytest.mark.parametrize("fate", [Fate.UNSENT, Fate.UNKNOWN, Fate.RUNNING])
def test_a_read_is_retried_after_any_failure_but_a_final_one(fate: Fate) -> None:
    outcome = dropped(fate)
    assert GET.decide(1, outcome) == Retry(after=0.5, error=outcome.error, why="X")
    final = dropped(Fate.FINAL)
    assert GET.decide(1, final) == Raise(final.error)


def test_a_post_that_never_reached_the_server_is_sent_again() -> None:
    # Could not connect, or the connection was closing before the request was written.
    outcome = dropped(Fate.UNSENT)
    assert POST.decide(1, outcome) == Retry(after=0.5, error=outcome.error, why="X")


def test_a_post_that_may_have_reached_the_server_is_never_sent_again_blind() -> None:
    after_writing = dropped(Fate.UNKNOWN)  # written, then the connection dropped
    unknown = lost(POST.decide(1, after_writing))
    assert unknown.error is after_writing.error
    assert not unknown.in_progress
    timed_out = dropped(Fate.RUNNING, APITimeoutError)  # the server may still be at it
    assert lost(POST.decide(1, timed_out)).in_progress


def test_a_final_failure_is_raised_for_a_post_too() -> None:
    refused = ProxyError("POST /x: 407", method="POST", path="/x", proxy=None, status=407)
    final = Dropped(error=refused, fate=Fate.FINAL, why="ClientHttpProxyError")
    assert POST.decide(1, final) == Raise(refused)


def test_an_unreadable_2xx_is_retried_for_a_read_and_lost_for_a_post() -> None:
    outcome = unreadable()
    assert GET.decide(1, outcome) == Retry(after=0.5, error=outcome.error, why="an unreadable 200")
    unknown = lost(POST.decide(1, outcome))
    assert unknown.error is outcome.error
    assert not unknown.in_progress  # it answered: whatever it did is done


# -- the retry budget -----------------------------------------------------------------------


def test_the_retry_budget_bounds_every_attempt() -> None:
    for outcome in (status(503), status(429, retry_after=1.0), dropped(Fate.UNSENT), unreadable()):
        assert not isinstance(GET.decide(2, outcome), Raise), outcome
        assert GET.decide(3, outcome) == Raise(outcome.error), outcome  # 1 + max_retries
    unsent = dropped(Fate.UNSENT)
    assert POST.decide(3, unsent) == Raise(unsent.error)


def test_no_retries_means_one_attempt() -> None:
    once = policy(idempotent=True, config=attrs.evolve(CONFIG, max_retries=0))
    outcome = status(500)
    assert once.decide(1, outcome) == Raise(outcome.error)


def test_backoff_grows_to_its_cap() -> None:
    waits = [GET.backoff(n) for n in range(1, 10)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert 0.0 <= RetryPolicy(config=CONFIG, idempotent=True).backoff(1) <= 0.5


# -- the deadline ---------------------------------------------------------------------------


def test_a_wait_that_reaches_the_deadline_expires_at_it() -> None:
    outcome = status(503)
    assert GET.decide(1, outcome, time_left=0.6) == Retry(after=0.5, error=outcome.error, why="503")
    assert GET.decide(1, outcome, time_left=0.5) == Expire(after=0.5, error=outcome.error)
    assert GET.decide(1, outcome, time_left=0.2) == Expire(after=0.2, error=outcome.error)
    assert GET.decide(1, outcome, time_left=-3.0) == Expire(after=0.0, error=outcome.error)


def test_a_pause_past_the_deadline_still_pauses_the_client() -> None:
    # The server's ask stands for the client's other requests; this one gives up.
    outcome = status(429, retry_after=30.0)
    assert GET.decide(1, outcome, time_left=1.0) == Expire(
        after=1.0, error=outcome.error, pause=30.0
    )


def test_the_deadline_does_not_turn_a_raise_into_a_wait() -> None:
    outcome = status(404)
    assert GET.decide(1, outcome, time_left=0.0) == Raise(outcome.error)
    assert isinstance(POST.decide(1, status(500), time_left=0.0), Raise)


# -- a lost answer, settled by the caller -----------------------------------------------------


def _lost(*, attempt: int = 1, retry_after: float | None = None) -> OutcomeUnknown:
    error = ServerError("POST /x -> 503", method="POST", path="/x", status=503)
    return OutcomeUnknown(error, attempt=attempt, in_progress=False, retry_after=retry_after)


def test_a_lost_answer_waits_as_the_server_asked_or_a_backoff() -> None:
    assert POST.wait_after_loss(_lost(retry_after=3.0)) == 3.0
    assert POST.wait_after_loss(_lost(retry_after=None)) == 0.5
    assert POST.wait_after_loss(_lost(attempt=2)) == 1.0
    assert POST.wait_after_loss(_lost(retry_after=600.0)) == 0.5  # too long: not waited


def test_a_lost_answer_ruled_out_is_sent_again_within_the_budget() -> None:
    assert POST.may_resend(_lost(attempt=1))
    assert POST.may_resend(_lost(attempt=2))
    assert not POST.may_resend(_lost(attempt=3))
    assert not POST.may_resend(_lost(retry_after=600.0))  # asked to wait longer than allowed


# -- the seam: what aiohttp's failures mean ---------------------------------------------------


def test_the_sender_classifies_failures_without_a_socket() -> None:
    sender = Sender(
        timeout=aiohttp.ClientTimeout(total=1), proxy=None, proxy_headers=None, target="h:1"
    )
    refused = sender.classify(
        aiohttp.ClientConnectorError(
            aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None),
            OSError(111, "refused"),
        )
    )
    assert (refused.kind, refused.fate, refused.what) == (
        APIConnectionError,
        Fate.UNSENT,
        "could not connect",
    )
    timeout = sender.classify(aiohttp.SocketTimeoutError())
    assert (timeout.kind, timeout.fate) == (APITimeoutError, Fate.RUNNING)
    gone = sender.classify(aiohttp.ServerDisconnectedError())
    assert gone.fate is Fate.UNKNOWN
    assert repr(sender) == "<Sender proxy=None>"


def test_the_sender_names_a_proxy_failure() -> None:
    route = choose_proxy(
        URL("https://api.copy.ai/api"),
        proxy="http://user:pw@proxy.example:3128",
        trust_env=False,
        loopback=False,
        environ={},
    )
    assert route is not None
    sender = Sender(
        timeout=aiohttp.ClientTimeout(total=1),
        proxy=route,
        proxy_headers=None,
        target="api.copy.ai:443",
    )
    key = aiohttp.client_reqrep.ConnectionKey("proxy.example", 3128, False, True, None, None, None)
    failure = sender.classify(aiohttp.ClientProxyConnectionError(key, OSError(111, "refused")))
    assert isinstance(failure, Failure)
    assert failure.kind is ProxyError
    assert failure.fate is Fate.UNSENT
    assert "pw" not in repr(sender)
    timeout = sender.classify(aiohttp.SocketTimeoutError())
    assert timeout.what.endswith("(through the proxy http://proxy.example:3128)")


def test_an_exchange_is_immutable() -> None:
    exchange = Exchange(200, {"Content-Type": "application/json"}, b"{}", "application/json")
    with pytest.raises(AttributeError):
        exchange.status = 500  # type: ignore[misc]
