"""kill -9 at seeded random points of a tiny `a3jax train` run, then the same command again.

What is covered (10 seeded kills in two lineages of 5: 12 processes, where 10 independent
kill-and-rerun trials would take 20): a lineage is one workdir of the 12-step run (checkpoint
every 2 steps, keep 2, so checkpoint writes and deletions of old checkpoints happen all along).
The command is started, killed with SIGKILL at a seeded point once it is training, started again
(the same command: it resumes from what the kills before left, or starts afresh if no checkpoint
was complete), killed again, ... five times, then run to its end. So later kills hit resumed
runs, which start among the leftovers of earlier kills (temporary folders of unfinished
checkpoint writes, which the training run removes at start; cut metric lines).

Kill points: a trial either aims at a checkpoint write (kills a seeded 0-20 ms after the
temporary folder of a seeded step's checkpoint is created by this run, so the kill lands at
different moments of the write), or kills a seeded 0-30 ms after this run logged a seeded number
of new steps, 1-7 (anywhere in training, which on this tiny run overlaps asynchronous checkpoint
writes most of the time).

Checked for every kill: the killed run had resumed from the newest *complete* checkpoint left by
the kill before (never a half-written one), and every step record in metrics.jsonl (loss, grad
norm, learning rate; written before the kill by this or earlier runs) is bitwise equal to the
uninterrupted reference run's. At the end the last run exits 0 having resumed from the newest
complete checkpoint, and every step's logged loss / grad norm / lr and the whole final train state
(params and optimizer state) are bitwise equal to the reference. At least 8 of the 10 kills must
land while the run was training; how many landed during a checkpoint write (this run's temporary
checkpoint folder left behind) is reported, not required.
"""

from __future__ import annotations

import random
import signal
import time

from .conftest import STEPS, checkpoint_entries, complete_steps, metrics_lines, resumed_step, train_records

LINEAGES = 2
KILLS_PER_LINEAGE = 5


def plan(rng: random.Random, resume: int) -> dict:
    """Where to kill a run that resumes at step `resume` (0 = fresh)."""
    boundaries = [s for s in range(resume + 2, STEPS - 1, 2)]  # checkpoint steps before the last
    if boundaries and rng.random() < 0.4:
        return {"mode": "checkpoint", "step": rng.choice(boundaries), "delay": rng.uniform(0, 0.02)}
    return {"mode": "steps", "new_steps": rng.randint(1, 7), "delay": rng.uniform(0, 0.03)}


def kill_once(harness, workdir, how: dict) -> dict:
    resume = (complete_steps(workdir) or [0])[-1]
    metrics_path = workdir / "metrics.jsonl"
    before = metrics_path.read_bytes() if metrics_path.exists() else b""
    started = time.time_ns()
    child = harness.start(workdir)

    def fresh_dir(prefix):  # a temporary checkpoint folder created by this run
        for name in checkpoint_entries(workdir):
            if name.startswith(prefix) and "tmp" in name:
                try:
                    if (workdir / "checkpoints" / name).stat().st_ctime_ns >= started:
                        return True
                except FileNotFoundError:
                    pass
        return False

    if how["mode"] == "checkpoint":
        prefix = f"{how['step']}."
        reached = child.wait_for(lambda: fresh_dir(prefix) or how["step"] in complete_steps(workdir), poll=0.002)
    else:
        target = min(resume + how["new_steps"], STEPS - 1)

        def trained():
            try:
                data = metrics_path.read_bytes()
            except FileNotFoundError:
                return False
            return data != before and data.count(b"\n") >= target  # this run logged new steps

        reached = child.wait_for(trained)
    if reached:
        time.sleep(how["delay"])
    alive = child.proc.poll() is None
    if alive:
        child.proc.send_signal(signal.SIGKILL)
    code = child.wait()
    return {"plan": how, "resume_expected": resume or None, "resumed_from": resumed_step(child.stderr),
            "killed_mid_run": alive and code == -signal.SIGKILL, "code": code,
            "partial": [n for n in checkpoint_entries(workdir) if "tmp" in n and fresh_dir(n.split(".")[0] + ".")],
            "complete": complete_steps(workdir), "lines": metrics_lines(workdir)}


def record_problems(workdir, reference) -> list[str]:
    bad = []
    for step, record in train_records(workdir).items():
        got = (record["train/loss"], record["train/grad_norm"], record["train/lr"])
        if reference.losses.get(step) != got:
            bad.append(step)
    return [f"logged steps {bad} differ from the reference"] if bad else []


def test_kill_9_at_random_points_then_rerun_ends_bitwise_equal(harness, reference, tmp_path, report):
    outcomes, problems = [], []
    for lineage in range(LINEAGES):
        rng = random.Random(4242 + lineage)
        workdir = tmp_path / f"lineage{lineage}"
        for kill in range(KILLS_PER_LINEAGE):
            how = plan(rng, (complete_steps(workdir) or [0])[-1])
            outcome = kill_once(harness, workdir, how)
            outcome["trial"] = f"{lineage}.{kill}"
            outcome["problems"] = record_problems(workdir, reference)
            if outcome["killed_mid_run"] and outcome["resumed_from"] != outcome["resume_expected"]:
                outcome["problems"].append(f"run resumed from {outcome['resumed_from']}, newest complete "
                                           f"checkpoint was {outcome['resume_expected']}")
            outcomes.append(outcome)
        final = harness.run(workdir)
        if final.returncode != 0:
            problems.append(f"lineage {lineage}: final run exited {final.returncode}: {final.stderr[-3000:]}")
        else:
            if outcomes[-1]["complete"] and resumed_step(final.stderr) != outcomes[-1]["complete"][-1]:
                problems.append(f"lineage {lineage}: final run resumed from {resumed_step(final.stderr)}, "
                                f"newest complete checkpoint was {outcomes[-1]['complete'][-1]}")
            problems += [f"lineage {lineage}: {p}" for p in reference.differences(workdir)]
    mid_run = [o for o in outcomes if o["killed_mid_run"]]
    mid_checkpoint = [o for o in mid_run if o["partial"]]
    lines = [f"kill {o['trial']}: {o['plan']['mode']:10s} exit {o['code']}, resumed from "
             f"{o['resumed_from']}, complete after kill {o['complete']}, left partial {o['partial']}, "
             f"{o['lines']} metric lines -> {o['problems'] or 'records bitwise equal'}" for o in outcomes]
    failed = [o for o in outcomes if o["problems"]]
    report(f"kill -9: {len(outcomes)} seeded kills in {LINEAGES} lineages, {len(mid_run)} mid-run, "
           f"{len(mid_checkpoint)} during a checkpoint write; {len(outcomes) - len(failed)}/{len(outcomes)} "
           f"kills: resumed from the newest complete checkpoint with bitwise-equal records; final runs "
           f"{'bitwise equal (losses, params, optimizer state)' if not problems else 'DIFFER'}")
    for line in lines:
        report("  " + line)
    assert not failed and not problems, "\n".join(lines + problems)
    assert len(mid_run) >= 8, "\n".join(lines)
