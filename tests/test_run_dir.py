"""The run directory: paths stay inside it, markers are content-keyed and crash-safe."""
import pytest

from teachfit.records import InputError
from teachfit.run import RunDir, file_digest, safe_name


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "/tmp/v", "a/b", "a\\b", ".hidden", "", "x" * 200,
                                  "a..b", "tab\tname", "nul\0"])
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(InputError):
        RunDir(tmp_path).responses(name)


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "Qwen2.5-7B-Instruct-t0.8-p0.95", "a_b+c"])
def test_safe_names_stay_inside(tmp_path, name):
    path = RunDir(tmp_path).responses(safe_name(name))
    assert path.parent == tmp_path / "responses" and path.name == f"{name}.jsonl"


def test_markers_remember_the_fingerprint(tmp_path):
    run = RunDir(tmp_path)
    assert not run.is_done("score", "k1")
    run.mark_done("score", "k1", {"pairs": 3})
    assert run.is_done("score", "k1") and not run.is_done("score", "k2")
    assert run.done_stats("score") == {"pairs": 3}
    (tmp_path / ".markers" / "score.json").write_text("{torn")  # a damaged marker means: not done
    assert not run.is_done("score", "k1")


def test_file_digest_follows_content_not_time(tmp_path):
    import os

    a = tmp_path / "a.jsonl"
    a.write_text("x\n")
    os.utime(a, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = a.stat()
    first = file_digest([a])
    # the same bytes with another modification time (a day later, then a second earlier): the same digest
    for shift in (86_400 * 10**9, -10**9):
        os.utime(a, ns=(before.st_mtime_ns + shift, before.st_mtime_ns + shift))
        assert a.stat().st_mtime_ns != before.st_mtime_ns and file_digest([a]) == first
    # other bytes of the same size, the modification time put back exactly: a different digest
    a.write_text("y\n")
    os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = a.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert file_digest([a]) != first


def test_a_stage_key_ignores_what_does_not_change_results():
    from teachfit.config import ScoreConfig
    from teachfit.run import fingerprint, settings_of

    plain = fingerprint("hf:student", settings_of(ScoreConfig(student=["hf:student"])))
    quiet = ScoreConfig(student=["hf:student"], progress=False, prefetch=False)
    assert fingerprint("hf:student", settings_of(quiet)) == plain  # the score stage's and its Ray shards' key
    assert fingerprint("hf:student", settings_of(ScoreConfig(student=["hf:student"], window=64))) != plain
