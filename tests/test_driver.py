"""decode/driver.drive, the one host loop of every plan: it stops at the first call with nothing left
(looking `lag` calls back, never at the call just sent), counts exactly the calls up to it, and a
plan that must finish and does not is a bug, said so."""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

from a3jax.decode.driver import drive


class Record(NamedTuple):
    valid: jnp.ndarray


def _calls(work: int):
    """send(t) for a plan with `work` calls that decide something: call t decides one token while
    t < work, and reports whether a later call has work."""
    sent = []

    def send(t):
        sent.append(t)
        return Record(jnp.asarray([t < work])), jnp.asarray(t + 1 < work)

    return send, sent


@pytest.mark.parametrize("lag", [1, 2])
@pytest.mark.parametrize("work", [1, 3, 7])
def test_stops_at_the_first_call_with_nothing_left_and_counts_only_up_to_it(work, lag):
    send, sent = _calls(work)
    records, done = drive(send, 100, lag=lag)
    assert done == work
    assert len(records) == work and all(bool(np.asarray(r.valid)[0]) for r in records)
    # the host reads call `work - 1`'s answer (nothing left) before sending call `work - 1 + lag`:
    # lag - 1 calls beyond the last with work were sent (they decide nothing), and no more
    assert sent == list(range(work - 1 + lag))


def test_a_schedule_that_runs_out_ends_there_unless_it_must_finish():
    send, sent = _calls(50)
    records, done = drive(send, 10)
    assert done == 10 and len(records) == 10 and sent == list(range(10))
    send, _ = _calls(50)
    with pytest.raises(RuntimeError, match="did not finish in 10 calls"):
        drive(send, 10, must_finish=True)


def test_progress_counts_every_decided_token_once(capsys):
    send, _ = _calls(5)
    drive(send, 100, progress=True, total=5)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "5/5" in bar
