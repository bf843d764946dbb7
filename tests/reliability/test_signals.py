"""Preemption: SIGTERM / SIGINT sent to a real `a3jax train` process while it trains.

Covered: the signal is sent once the run has logged a few steps; the run must finish the step
it is on, save a checkpoint at that step boundary (not only at a checkpoint_every multiple), say
so on stderr ("stopped by SIGTERM at step N" and the checkpoint's path) and exit 0; the same
command then resumes at step N and ends with every step's logged loss / grad norm / lr and the
whole final train state bitwise equal to the uninterrupted run. SIGTERM and SIGINT are both
sent to one workdir in turn (the SIGINT hits the resumed run), so one final comparison covers
both resumes. A second signal, sent after the run acknowledged the first, exits at once with
128 + signum and "second signal" on stderr (what such an exit leaves behind is what a kill -9
leaves: see test_kill.py).
"""

from __future__ import annotations

import re
import signal
import time

from .conftest import STEPS, complete_steps, metrics_lines, resumed_step, train_records


def stop_with(harness, workdir, sig, after_steps: int) -> tuple[int, str, int, int]:
    """Starts the run, sends `sig` once it logged `after_steps` new steps; (code, stderr, seen, N)."""
    before = metrics_lines(workdir)
    child = harness.start(workdir)
    base = (complete_steps(workdir) or [0])[-1]

    def trained():
        lines = metrics_lines(workdir)
        return lines >= base + after_steps and lines != before

    assert child.wait_for(trained), f"run ended before the signal:\n{child.stderr}"
    seen = max(train_records(workdir))
    child.proc.send_signal(sig)
    code = child.wait(timeout=120)
    err = child.stderr
    found = re.findall(rf"stopped by {sig.name} at step (\d+)", err)
    return code, err, seen, int(found[-1]) if found else -1


def test_sigterm_then_sigint_save_at_the_step_boundary_exit_0_and_resume_exactly(harness, reference, tmp_path,
                                                                                 report):
    workdir = tmp_path / "run"
    stops = []
    for sig, after in ((signal.SIGTERM, 3), (signal.SIGINT, 2)):
        code, err, seen, step = stop_with(harness, workdir, sig, after)
        assert code == 0, err
        assert resumed_step(err) == (stops[-1][2] if stops else None), err
        assert step != -1, f"no 'stopped by {sig.name} at step N' line:\n{err}"
        line = next(ln for ln in err.splitlines() if f"stopped by {sig.name} at step {step}" in ln)
        assert str(workdir / "checkpoints" / str(step)) in line, line
        assert seen <= step < STEPS, (seen, step, err)
        assert complete_steps(workdir)[-1] == step, complete_steps(workdir)
        assert max(train_records(workdir)) == step  # nothing logged past the checkpoint
        stops.append((sig.name, seen, step, step % 2 == 1))
    final = harness.run(workdir)
    assert final.returncode == 0, final.stderr
    assert resumed_step(final.stderr) == stops[-1][2]
    assert reference.differences(workdir) == []
    report("signals: " + "; ".join(f"{name} sent after step {seen} -> checkpoint at step {step}"
                                   f"{' (off the checkpoint_every grid)' if odd else ''}, exit 0"
                                   for name, seen, step, odd in stops)
           + "; resumed twice, final losses + state bitwise equal to the uninterrupted run")


def test_second_signal_exits_at_once(harness, tmp_path, report):
    workdir = tmp_path / "run"
    child = harness.start(workdir)
    assert child.wait_for(lambda: metrics_lines(workdir) >= 2), child.stderr
    child.proc.send_signal(signal.SIGTERM)
    # Standard signals do not queue: send the second only once the first was acknowledged.
    acknowledged = child.wait_for(lambda: "SIGTERM" in child.stderr, poll=0.001)
    sent_at = time.monotonic()
    if acknowledged:
        child.proc.send_signal(signal.SIGTERM)
    code = child.wait(timeout=60)
    waited = time.monotonic() - sent_at
    err = child.stderr
    assert acknowledged, f"the run ended before the second signal could be sent:\n{err}"
    assert code in (128 + signal.SIGTERM, -signal.SIGTERM), (code, err)
    assert "second signal" in err, err
    assert "stopped by SIGTERM" not in err  # it did not go on to finish the graceful stop
    assert waited < 5, waited
    report(f"second SIGTERM: exit {code} {waited * 1000:.0f} ms after it was sent, 'second signal' on stderr")
