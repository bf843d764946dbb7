"""Disk and input faults against a workdir that already holds checkpoints (steps 2 and 4).

Covered:
  (a) a checkpoint write failing with a real OS error: the resumed `a3jax train` runs in a
      subprocess with RLIMIT_FSIZE = 16 KiB (SIGXFSZ ignored), so writing the checkpoint's data
      files fails with EFBIG, as on a full disk or quota. Expected: exit 2 and one error line
      saying the checkpoint could not be written and naming the previous complete checkpoint;
      checkpoints 2 and 4 byte-identical, no half-written step listed; rerunning without the
      limit resumes at step 4 and ends bitwise equal to the uninterrupted run. Last, stderr must
      be that line alone: no tracebacks around it.
  (b) a corrupt data shard (bytes flipped, size unchanged, so the cheap size check at load
      passes): in the records only (found by the chunk hashes when a damaged record is read, at
      step 6 here) or in the index too (found when the shard is opened): exit 2, one line naming
      the shard; checkpoints byte-identical.
  (c) a tokenizer that does not match the prepared shards' manifest: exit 2, one line naming the
      prepared folder, the manifest's tokenizer and the configured one; the workdir byte-identical.
  (d) `a3jax export` reading the workdir while the training run writes a checkpoint in it.
(b, index damaged) and (c) run `a3jax train` in this process (they fail while loading, before any
step).
"""

from __future__ import annotations

import shutil
import sys

import pytest

from a3jax import cli

from .conftest import TINY, complete_steps, copy_workdir, partial_entries, resumed_step, tree_digest

LIMIT = 16 << 10
# An exec wrapper rather than a preexec_fn (which would run Python in a fork of this multithreaded
# process): sets the file size limit, ignores SIGXFSZ (writes past the limit then fail with EFBIG
# instead of killing the process), and becomes the command. Both survive exec.
LIMITED = [sys.executable, "-c", "import os, resource, signal, sys; "
           "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); "
           "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); os.execv(sys.argv[2], sys.argv[2:])", str(LIMIT)]


def test_a_failing_checkpoint_write_is_named_and_damages_nothing(harness, reference, at_step4, tmp_path, report):
    workdir = copy_workdir(at_step4, tmp_path / "run")
    before = tree_digest(workdir / "checkpoints")
    result = harness.run(workdir, prefix=LIMITED)
    err = result.stderr.strip()
    assert result.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("a3jax train: error:")]
    assert len(errors) == 1, err
    last = errors[0]
    assert last.startswith("a3jax train: error: could not write the checkpoint at step 6"), last
    assert f"previous complete checkpoint {workdir / 'checkpoints' / '4'} is intact" in last, last
    assert "File too large" in last or "os_error_code='27'" in last, last
    assert complete_steps(workdir) == [2, 4]
    after = tree_digest(workdir / "checkpoints")
    assert {k: v for k, v in after.items() if k.split("/")[0] in ("2", "4")} == before
    leftovers = partial_entries(workdir)

    recovered = harness.run(workdir)
    assert recovered.returncode == 0, recovered.stderr
    assert resumed_step(recovered.stderr) == 4
    assert reference.differences(workdir) == []
    assert partial_entries(workdir) == []
    noise = err.count("Traceback")
    report(f"checkpoint write failing with EFBIG (RLIMIT_FSIZE {LIMIT >> 10} KiB): exit 2, the error line names "
           f"checkpoints/4 as intact; checkpoints 2 and 4 byte-identical; temporary folder left {leftovers}; "
           f"rerun without the limit resumed at 4 and ended bitwise equal; stderr: {len(err.splitlines())} lines, "
           f"{noise} tracebacks")
    # The error is the one thing the user should have to read.
    assert noise == 0 and err.splitlines()[-1] == last, (
        f"the error line is buried in {len(err.splitlines())} lines of stderr with {noise} tracebacks")


def train_in_process(harness, workdir, *extra):
    return ["train", f"--config={TINY}", f"--workdir={workdir}", "--no-progress"] + [
        f"--config.{o}" for o in harness.overrides("mesh.devices=1", *extra)]


def one_line_error(argv, capsys) -> tuple[int, str]:
    """(exit code, the error line) of `a3jax ARGV` run here; asserts that the error is one line
    (progress lines such as '[a3jax] resumed from ...' may come before it) and no traceback."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if not line.startswith("[a3jax]")]
    assert len(errors) == 1, "\n".join(lines)
    assert errors[0].startswith(f"a3jax {argv[0]}: error:"), "\n".join(lines)
    return code, errors[0]


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.delenv("A3JAX_DEBUG", raising=False)


# Bit rot, size unchanged (so the cheap size check at load passes). The shard (48 small records,
# one per chunk, then the index, padded to 128 KiB) is damaged in the records only, found by
# the chunk hashes when they are read; or all over, index included, found when it is opened.
CORRUPTIONS = {"records": lambda size: range(64, 8192, 64), "records+index": lambda size: range(64, size // 2, 64)}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_shard_is_named_and_damages_nothing(harness, at_step4, tmp_path, capsys, quiet, report,
                                                      corruption):
    workdir = copy_workdir(at_step4, tmp_path / "run")
    shards = tmp_path / "shards"
    shutil.copytree(harness.shards, shards)
    shard = shards / "shard-00000.arrayrecord"
    data = bytearray(shard.read_bytes())
    for offset in CORRUPTIONS[corruption](len(data)):
        data[offset] ^= 0x5A
    shard.write_bytes(bytes(data))
    before = tree_digest(workdir / "checkpoints")
    if corruption == "records":  # found at step 6: a child process (its compiled step is cached)
        result = harness.run(workdir, f"data.paths={shards}")
        errors = [line for line in result.stderr.splitlines() if not line.startswith("[a3jax]")]
        assert len(errors) == 1 and errors[0].startswith("a3jax train: error:"), result.stderr
        code, err = result.returncode, errors[0]
    else:  # found while loading, before any step: in this process
        code, err = one_line_error(train_in_process(harness, workdir, f"data.paths={shards}"), capsys)
    assert code == 2, err
    assert str(shard) in err and "prepare" in err, err
    if corruption == "records":
        assert "corrupt" in err.lower(), err
    assert tree_digest(workdir / "checkpoints") == before
    report(f"corrupt shard ({corruption}): exit 2, {err!r}; checkpoints byte-identical")


def build_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from .conftest import corpus_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=259, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_texts(), trainer=trainer)
    tok.save(str(path))
    return path


def test_a_tokenizer_that_does_not_match_the_manifest_is_named(harness, at_step4, tmp_path, capsys, quiet, report):
    workdir = copy_workdir(at_step4, tmp_path / "run")
    tokenizer = build_tokenizer(tmp_path / "tokenizer.json")
    before = tree_digest(workdir)
    code, err = one_line_error(train_in_process(harness, workdir, f"data.tokenizer={tokenizer}"), capsys)
    assert code == 2, err
    assert str(harness.shards) in err, err
    assert "'bytes'" in err, err  # the manifest's tokenizer
    assert tree_digest(workdir) == before
    report(f"tokenizer not matching the manifest: exit 2, {err!r}; workdir byte-identical")
    assert str(tokenizer) in err, f"the configured tokenizer is not named: {err}"


def test_reading_a_workdir_while_training_writes_a_checkpoint_breaks_nothing(harness, reference, tmp_path, capsys,
                                                                             quiet, report):
    """(d) `a3jax export` (any command that opens the workdir's checkpoints: sample, eval, export)
    run while the training process is in the middle of writing a checkpoint. The training process
    is frozen with SIGSTOP while its temporary checkpoint folder exists, so the overlap is certain.
    The reader must leave the in-flight folder alone, and the training run must then finish
    normally, bitwise equal to the uninterrupted run."""
    import signal

    from .conftest import checkpoint_entries

    workdir = tmp_path / "run"
    child = harness.start(workdir)
    in_flight = []

    def writing():
        in_flight[:] = [n for n in checkpoint_entries(workdir) if "tmp" in n and int(n.split(".")[0]) >= 4]
        return bool(in_flight) and bool(complete_steps(workdir))

    try:
        assert child.wait_for(writing, poll=0.001), child.stderr
        child.proc.send_signal(signal.SIGSTOP)
        code = cli.main(["export", f"--workdir={workdir}", f"--out={tmp_path / 'hf'}"])
        err = capsys.readouterr().err
        assert code == 0, err
        still_there = [n for n in in_flight if (workdir / "checkpoints" / n).exists()]
    finally:
        child.proc.send_signal(signal.SIGCONT)
    code = child.wait()
    report(f"export while training writes {in_flight}: in-flight folder "
           f"{'left alone' if still_there == in_flight else 'DELETED by the reader'}; training exit {code}")
    assert still_there == in_flight, f"the reader deleted the training run's in-flight checkpoint {in_flight}"
    assert code == 0, child.stderr
    assert reference.differences(workdir) == []
