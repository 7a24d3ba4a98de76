"""bench/run.py: discovery, fresh-process measurements, medians, ratios and the results table."""
import importlib.util
import json
import os
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def runner(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(ROOT, "bench", "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "toy.py").write_text(textwrap.dedent('''
        import json, os, sys
        CASES = [{"name": "speed", "unit": "s", "target": 1.0, "impls": ["ours", "ref"], "description": "toy"},
                 {"name": "broken", "unit": "s", "target": None, "impls": ["ours", "ref"]},
                 {"name": "noisy", "unit": "s", "target": 1.0, "impls": ["ours", "ref"], "repeat": 5}]
        args = sys.argv[1:]
        if args == ["--list"]:
            print(json.dumps(CASES)); sys.exit(0)
        case, impl = args[1], args[3]
        if case == "broken" and impl == "ours":
            raise SystemExit("boom")
        counter = os.path.join(os.path.dirname(__file__), f"{case}-{impl}.count")
        n = int(open(counter).read()) if os.path.exists(counter) else 0
        open(counter, "w").write(str(n + 1))
        print("noise line")
        print(json.dumps({"value": (1.0 if impl == "ours" else 2.0) + n}))
    '''))
    (cases / "_private.py").write_text("raise SystemExit('must not run')")
    monkeypatch.setattr(mod, "CASES_DIR", str(cases))
    monkeypatch.setattr(mod, "WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setattr(mod, "discover", lambda cases_dir=str(cases): sorted(
        os.path.join(str(cases), f) for f in os.listdir(cases) if f.endswith(".py") and not f.startswith("_")))
    monkeypatch.setattr(mod, "machine_info", lambda: {"cpu": "test"})
    return mod, tmp_path


def test_runner_writes_medians_ratios_and_errors(runner):
    mod, tmp_path = runner
    out = tmp_path / "RESULTS.md"
    assert mod.main(["--repeat", "3", "--out", str(out)]) == 0
    text = out.read_text()
    # ours: 1, 2, 3 -> median 2; ref: 2, 3, 4 -> median 3; each run was a new process (the counter grew)
    assert "| toy | speed | s | ours | 2 (1-3) | ref | 3 (2-4) | 0.667 | 1.0 | yes |" in text
    assert "toy/broken [ours]: exit 1: boom" in text
    assert "- cpu: test" in text
    rows = json.loads((tmp_path / "work" / "results.json").read_text())
    assert [r["name"] for r in rows] == ["speed", "broken", "noisy"]
    # a case asking for more runs gets them (5 > --repeat 3): ours 1..5 -> median 3, ref 2..6 -> median 4
    assert "| toy | noisy | s | ours | 3 (1-5) | ref | 4 (2-6) | 0.750 | 1.0 | yes |" in text


def test_runner_only_keeps_previous_rows(runner):
    mod, tmp_path = runner
    out = tmp_path / "RESULTS.md"
    mod.main(["--repeat", "1", "--out", str(out)])
    mod.main(["--repeat", "1", "--only", "toy/speed", "--out", str(out)])
    text = out.read_text()
    assert "| toy | speed |" in text and "| toy | broken |" in text
    assert "| toy | speed | s | ours | 2 (2-2) | ref | 3 (3-3) |" in text  # second measurement of speed


def test_repeat_must_be_positive(runner):
    mod, _ = runner
    with pytest.raises(SystemExit):
        mod.main(["--repeat", "0"])
