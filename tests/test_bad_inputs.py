"""Bad inputs through the real CLI (`python -m teachfit.cli`): exit code 2, `file:line` (or the
file) in a one-line message, never a traceback; and the inputs that must keep working.

The CLI cases run in one Python process that executes `teachfit.cli` as `__main__` once per
case (exactly what `python -m teachfit.cli` does), so torch is imported once; a few cases are
also run as separate processes to show the two agree."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PAIRS, build_tokenizer, write_pairs

CLI = [sys.executable, "-m", "teachfit.cli"]

DRIVER = r'''
import contextlib, io, json, runpy, sys, traceback, warnings
cases_path, results_path = sys.argv[1], sys.argv[2]
with open(cases_path) as handle:
    cases = json.load(handle)
results = {}
for name, argv in cases.items():
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["teachfit"] + argv
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            runpy.run_module("teachfit.cli", run_name="__main__", alter_sys=False)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:  # what python -m would print before exiting with 1
            err.write(traceback.format_exc())
            code = 1
    results[name] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
with open(results_path, "w") as handle:
    json.dump(results, handle)
'''


def run_cases(tmp_path, cases):
    """{name: argv} -> {name: {code, stdout, stderr}}, all in one process."""
    (tmp_path / "cases.json").write_text(json.dumps({k: [str(a) for a in v] for k, v in cases.items()}))
    (tmp_path / "driver.py").write_text(DRIVER)
    done = subprocess.run([sys.executable, tmp_path / "driver.py", tmp_path / "cases.json", tmp_path / "results.json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads((tmp_path / "results.json").read_text())


def error_lines(stderr):
    """stderr without progress bars (transformers draws one while loading weights): what we print."""
    return [l for l in stderr.replace("\r", "\n").splitlines() if l.strip() and "it/s]" not in l and "s/it]" not in l]


def jsonl_bytes(path, *lines):
    path.write_bytes(b"".join(lines))
    return path


def good(i=0, **change):
    return dict(PAIRS[i], **change)


def line(record):
    return json.dumps(record).encode() + b"\n"


def remote_code_model(folder, tiny_llama):
    """A folder whose config asks for the hub's own modeling code (auto_map), tokenizer included."""
    folder.mkdir()
    build_tokenizer().save_pretrained(folder)
    config = json.loads((Path(tiny_llama) / "config.json").read_text())
    config.update(model_type="teachfit_custom_arch", architectures=["CustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    (folder / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    return folder


def score_files_for(tmp_path):
    """Bad and good response files: name -> (path, expected exit code, what stderr/stdout must say)."""
    d = tmp_path / "in"
    d.mkdir()
    ok = line(good(0))
    files = {}

    def add(name, path, code, says):
        files[name] = (path, code, says)

    # item 4: what used to be a traceback
    p = jsonl_bytes(d / "latin1.jsonl", ok, b'{"instruction": "caf\xe9", "response": "ok"}\n')
    add("non-UTF-8 .jsonl", p, 2, f"{p}:2: not UTF-8")
    p = d / "latin1.json"
    p.write_bytes(b'[\n {"instruction": "a", "response": "b"},\n {"instruction": "caf\xe9", "response": "b"}\n]')
    add("non-UTF-8 .json", p, 2, f"{p}:3: not UTF-8")
    p = d / "broken.json"
    p.write_text('[\n {"instruction": "a", "response": "b"},\n {"instruction": "c", \n]')
    add("malformed .json", p, 2, f"{p}:4: malformed JSON")
    p = d / "empty.parquet"
    p.write_bytes(b"")
    add("0-byte .parquet", p, 2, f"{p}: not a valid Parquet file")
    p = d / "garbage.parquet"
    p.write_bytes(b"PAR1 this is not parquet at all" * 10)
    add("garbage .parquet", p, 2, f"{p}: not a valid Parquet file")
    p = jsonl_bytes(d / "msgstr.jsonl", line({"messages": ["Write a poem.", "The sea."]}))
    add("messages as strings", p, 2, f"{p}:1: wrong type: 'messages' turn 1 is a str")
    p = jsonl_bytes(d / "surr_resp.jsonl", ok, b'{"instruction": "x", "response": "bad \\ud800 half"}\n')
    add("lone surrogate in response", p, 2, f"{p}:2: invalid unicode (lone surrogate) in the response")
    p = jsonl_bytes(d / "surr_instr.jsonl", b'{"instruction": "\\udfff?", "response": "fine"}\n')
    add("lone surrogate in instruction", p, 2, f"{p}:1: invalid unicode (lone surrogate) in the instruction")
    p = jsonl_bytes(d / "badturn.jsonl", line({"messages": [{"role": ["user"], "content": "Q"},
                                                             {"role": "assistant", "content": "A"}]}))
    add("role of a wrong type", p, 2, f"{p}:1: missing field: 'messages' needs one user and one assistant turn")
    p = jsonl_bytes(d / "intinput.jsonl", line({"instruction": 5, "input": "x", "output": "y"}))
    add("number instruction with input", p, 2, f"{p}:1: wrong type")
    # item 3: duplicates within one teacher
    p = jsonl_bytes(d / "dupid.jsonl", ok, line(good(1)), line(good(2, id=PAIRS[0]["id"])))
    add("duplicate id", p, 2, f"{p}:3: duplicate id: 'a' of teacher 'dupid' (first at {p}:1)")
    p = jsonl_bytes(d / "duppair.jsonl", ok, line(good(0, id="other")))
    add("duplicate pair", p, 2, f"{p}:2: duplicate pair: the same instruction and response of teacher 'duppair' "
                                f"(first at {p}:1)")
    # what already worked, and must keep working (or failing cleanly)
    p = jsonl_bytes(d / "bom.jsonl", b"\xef\xbb\xbf" + ok, line(good(1)))
    add("BOM", p, 0, "scored 2 pairs")
    p = jsonl_bytes(d / "crlf.jsonl", ok.replace(b"\n", b"\r\n"), line(good(1)).replace(b"\n", b"\r\n"))
    add("CRLF", p, 0, "scored 2 pairs")
    p = jsonl_bytes(d / "big.jsonl", line(good(0, response="word " * 200_000)))
    add("1 MB response", p, 0, "scored 1 pairs (1 truncated")
    p = jsonl_bytes(d / "emptyresp.jsonl", ok, line(good(1, response="")))
    add("empty response", p, 2, f"{p}:2: empty response")
    p = jsonl_bytes(d / "wsresp.jsonl", line(good(1, response=" \n\t ")))
    add("whitespace response", p, 2, f"{p}:1: empty response")
    p = jsonl_bytes(d / "numresp.jsonl", line(good(1, response=42)))
    add("response a number", p, 2, f"{p}:1: wrong type")
    p = jsonl_bytes(d / "listinstr.jsonl", line(good(1, instruction=["a", "b"])))
    add("instruction a list", p, 2, f"{p}:1: wrong type")
    p = jsonl_bytes(d / "noresp.jsonl", line({"instruction": "x"}))
    add("missing response", p, 2, f"{p}:1: missing field: 'response'")
    p = jsonl_bytes(d / "malformed.jsonl", ok, b'{"instruction": "x",\n')
    add("malformed .jsonl", p, 2, f"{p}:2: malformed JSON")
    p = jsonl_bytes(d / "array.jsonl", b"[1, 2]\n")
    add("not an object", p, 2, f"{p}:1: not a JSON object")
    p = jsonl_bytes(d / "empty.jsonl", b"")
    add("empty file", p, 2, f"{p}: no valid pairs to score")
    p = d / "notes.txt"
    p.write_text("hello")
    add("unknown format", p, 2, f"{p}: unknown format '.txt'")
    p = d / "nothing_here"
    p.mkdir()
    add("empty folder", p, 2, f"{p}: no .jsonl/.json/.parquet files")
    add("missing path", d / "missing.jsonl", 2, f"{d / 'missing.jsonl'}: file not found")
    return files


def test_bad_response_files_and_models_through_the_cli(tmp_path, tiny_llama):
    files = score_files_for(tmp_path)
    common = ["--student", f"hf:{tiny_llama}", "--dtype", "float32", "--no-progress", "--max-length", "128"]
    cases = {name: ["score", path, "--out", tmp_path / "out" / f"{i}.parquet"] + common
             for i, (name, (path, _, _)) in enumerate(files.items())}
    # the same id under two teachers is the normal case (one instruction, several answers)
    a = write_pairs(tmp_path / "alpha.jsonl", PAIRS)
    b = write_pairs(tmp_path / "beta.jsonl", [dict(p, response=p["response"] + " Sure.") for p in PAIRS])
    cases["same id, two teachers"] = ["score", a, b, "--out", tmp_path / "two.parquet"] + common
    dup = tmp_path / "in" / "dupid.jsonl"
    cases["duplicates skipped"] = ["score", dup, "--skip-invalid", "--out", tmp_path / "skip.parquet"] + common
    # models: garbage GGUF, empty folder, unknown prefix, a model that needs remote code
    (tmp_path / "junk.gguf").write_bytes(b"this is not a gguf file")
    (tmp_path / "emptymodel").mkdir()
    remote = remote_code_model(tmp_path / "remote", tiny_llama)
    model_cases = {
        "garbage .gguf": (f"gguf:{tmp_path / 'junk.gguf'}", f"{tmp_path / 'junk.gguf'}: not a valid GGUF file"),
        "hf: empty folder": (f"hf:{tmp_path / 'emptymodel'}", "has no config.json"),
        "unknown model prefix": ("nope:thing", "nope:thing"),
        "needs remote code": (f"hf:{remote}", "--trust-remote-code"),
    }
    for name, (spec, _) in model_cases.items():
        cases[name] = ["score", a, "--student", spec, "--no-progress", "--out", tmp_path / "m.parquet"]

    results = run_cases(tmp_path, cases)

    failures = []
    for name, (path, code, says) in files.items():
        r = results[name]
        text = r["stderr"] + r["stdout"]
        if r["code"] != code or says not in text or "Traceback" in text:
            failures.append(f"{name}: exit {r['code']} (want {code}), want {says!r} in: {text[-600:]}")
        if code == 2 and len(error_lines(r["stderr"])) != 1:
            failures.append(f"{name}: not one line: {r['stderr']!r}")
    for name, (_, says) in model_cases.items():
        r = results[name]
        if r["code"] != 2 or says not in r["stderr"] or "Traceback" in r["stderr"] or "remote code ran" in r["stderr"]:
            failures.append(f"{name}: exit {r['code']}, want {says!r} in: {r['stderr'][-600:]}")
    assert not failures, "\n".join(failures)

    r = results["same id, two teachers"]
    assert r["code"] == 0 and "scored 8 pairs" in r["stdout"], r["stderr"]
    r = results["duplicates skipped"]
    assert r["code"] == 0 and "scored 2 pairs" in r["stdout"] and "1 skipped" in r["stdout"], r["stderr"]
    from teachfit.files import read_table

    rows, meta = read_table(tmp_path / "skip.parquet")
    assert [row["id"] for row in rows] == ["a", "b"]
    assert meta["counts"]["dropped_duplicate_id"] == 1 and meta["skipped"][0]["line"] == 3


def score_table(path, rows):
    from teachfit.files import write_table

    write_table(path, rows, {"stage": "score", "scorers": [{"role": "self", "model": {"spec": "hf:x"}}]})
    return path


def rows_of(teacher, rewards, losses):
    return [{"id": f"{teacher}{i}", "teacher": teacher, "reward": r, "loss_self": l}
            for i, (r, l) in enumerate(zip(rewards, losses))]


def test_bad_score_files_and_settings_through_rank(tmp_path):
    base = rows_of("a", [6.0, 7.0], [1.0, 1.2]) + rows_of("b", [5.0, 5.5], [0.5, 0.7])
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"\x00\x01not parquet" * 50)
    zero = tmp_path / "zero.parquet"
    zero.write_bytes(b"")
    none_loss = score_table(tmp_path / "none_loss.parquet", base[:-1] + [dict(base[-1], loss_self=None)])
    no_loss = score_table(tmp_path / "no_loss.parquet", [{k: v for k, v in r.items() if k != "loss_self"} for r in base])
    no_teacher = score_table(tmp_path / "no_teacher.parquet", [{k: v for k, v in r.items() if k != "teacher"} for r in base])
    text_reward = score_table(tmp_path / "text_reward.csv", base[:-1] + [dict(base[-1], reward="high")])
    good = score_table(tmp_path / "good.parquet", base)
    cases = {
        "garbage parquet": (["rank", garbage], f"{garbage}: not a valid Parquet file"),
        "0-byte parquet": (["rank", zero], f"{zero}: not a valid Parquet file"),
        "missing file": (["rank", tmp_path / "nope.parquet"], f"{tmp_path / 'nope.parquet'}: file not found"),
        "None loss_self": (["rank", none_loss], "1 of 4 pairs have no loss_self: first pair 'b1' of teacher 'b'"),
        "no loss_self column": (["rank", no_loss], "no 'loss_self' column"),
        "no teacher column": (["rank", no_teacher], "no 'teacher' column"),
        "reward not a number": (["rank", text_reward], "column 'reward' holds 'high', not a number"),
        "--beta nan": (["rank", good, "--beta", "nan"], "must be a finite number >= 0, got nan"),
        "--beta inf": (["rank", good, "--beta", "inf"], "must be a finite number >= 0, got inf"),
        "--beta -1": (["rank", good, "--beta", "-1"], "must be a finite number >= 0, got -1.0"),
    }
    results = run_cases(tmp_path, {name: argv for name, (argv, _) in cases.items()})
    failures = [f"{name}: exit {results[name]['code']}, want {says!r} in {results[name]['stderr'][-500:]}"
                for name, (_, says) in cases.items()
                if results[name]["code"] != 2 or says not in results[name]["stderr"]
                or "Traceback" in results[name]["stderr"] or len(error_lines(results[name]["stderr"])) != 1]
    assert not failures, "\n".join(failures)


def test_nonfinite_rewards_are_dropped_counted_and_never_recommended(tmp_path):
    from teachfit.rank import rank_teachers

    # "huge" has an infinite reward (and would win on any mean); "nan" a NaN loss on one pair
    # (the teachers' ids differ, so no instruction is shared: each teacher is compared on its own pairs)
    rows = (rows_of("huge", [math.inf, 1.0, 2.0], [1.0, 1.0, 1.0]) + rows_of("fine", [6.0, 7.0], [1.0, 1.2])
            + rows_of("nan", [3.0, 9.0], [1.0, math.nan]))
    with pytest.warns(RuntimeWarning, match="dropped 2 pairs"):
        ranking = rank_teachers(rows, beta=3.0, n_bootstrap=50, shared_only=False)
    by = {r["teacher"]: r for r in ranking.rows}
    assert ranking.settings["dropped_nonfinite"] == 2
    assert by["huge"]["n_dropped_nonfinite"] == 1 and by["nan"]["n_dropped_nonfinite"] == 1
    assert by["huge"]["n_pairs"] == 2 and by["huge"]["car"] == pytest.approx(1.5 / (1 + 3 * 1.0))
    assert by["nan"]["car"] == pytest.approx(3.0 / (1 + 3 * 1.0))
    assert by["fine"]["car"] == pytest.approx(6.5 / (1 + 3 * 1.1))
    assert ranking.recommended == "fine"
    assert all(math.isfinite(r["car"]) for r in ranking.rows)
    with pytest.raises(ValueError, match="every pair of teacher"):
        rank_teachers(rows_of("x", [math.nan], [1.0]) + rows_of("y", [1.0], [1.0]), n_bootstrap=0)
    # through the CLI: exit 0, the count in the JSON, the finite teacher recommended
    path = score_table(tmp_path / "inf.parquet", rows)
    done = subprocess.run(CLI + ["rank", str(path), "--json", "--bootstrap", "0", "--no-shared-only"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["recommended"] == "fine" and out["settings"]["dropped_nonfinite"] == 2


def test_separate_processes_agree_with_the_in_process_driver(tmp_path, tiny_llama):
    bad = jsonl_bytes(tmp_path / "latin1.jsonl", line(good(0)), b'{"instruction": "caf\xe9", "response": "ok"}\n')
    done = subprocess.run(CLI + ["score", str(bad), "--student", f"hf:{tiny_llama}", "--no-progress",
                                 "--out", str(tmp_path / "s.parquet")], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert error_lines(done.stderr) == [f"error: {bad}:2: not UTF-8: byte 0xe9 at column 21 (save the file as UTF-8)"]
    done = subprocess.run(CLI + ["rank", str(score_table(tmp_path / "g.parquet", rows_of("a", [1.0], [1.0]))),
                                 "--beta", "nan"], capture_output=True, text=True)
    assert done.returncode == 2 and "must be a finite number >= 0, got nan" in done.stderr and "Traceback" not in done.stderr


def test_a_damaged_gguf_with_the_right_magic_is_a_one_line_model_error(tmp_path):
    from teachfit.models import ModelSpecError, load

    damaged = tmp_path / "cut.gguf"
    damaged.write_bytes(b"GGUF\x03\x00\x00\x00" + b"cut short here")
    with pytest.raises(ModelSpecError, match=f"{damaged}: transformers cannot read this GGUF file"):
        load("causal_lm", f"gguf:{damaged}")
    pytest.importorskip("llama_cpp")
    with pytest.raises(ModelSpecError, match=f"{damaged}: not a valid GGUF file"):
        load("teacher", f"gguf:{damaged}")


@pytest.mark.parametrize("record,reason", [
    ({"instruction": 42}, "wrong type: the instruction is not a string (int)"),
    ({"instruction": ["a", "b"]}, "wrong type: the instruction is not a string (list)"),
    ({"prompt": {"text": "x"}}, "wrong type: the instruction is not a string (dict)"),
    ({"instruction": "   "}, "empty instruction"),
    ({"messages": ["hello"]}, "wrong type: 'messages' must be a list of objects with 'role' and 'content'"),
    ('{"instruction": "half \\ud83d"}', "invalid unicode (lone surrogate) in the instruction"),
])
def test_instruction_errors_say_what_is_wrong(tmp_path, record, reason):
    from teachfit.instructions import read_instructions
    from teachfit.records import InputError

    path = write_pairs(tmp_path / "i.jsonl", [{"instruction": "fine"}, record])
    with pytest.raises(InputError) as caught:
        read_instructions([path])
    assert str(caught.value) == f"{path}:2: {reason}"


def test_an_empty_instruction_file_says_so(tmp_path):
    from teachfit.instructions import read_instructions
    from teachfit.records import InputError

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(InputError, match=f"^{empty}: no instructions in {empty}$"):
        read_instructions([empty])
    bad = write_pairs(tmp_path / "bad.jsonl", [{"instruction": ""}])
    skipped = []
    with pytest.raises(InputError, match="no valid instructions"):
        read_instructions([bad], skip_invalid=True, skipped=skipped)
    assert skipped and skipped[0]["reason"] == "empty instruction"
