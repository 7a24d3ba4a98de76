"""bench/run.py --only keeps the rows it did not measure, also on a fresh checkout without results.json."""
import importlib.util
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _run_module():
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(HERE, "..", "bench", "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(area, name, median):
    stats = [{"median": median, "min": median, "max": median}, {"median": 2.0, "min": 2.0, "max": 2.0}]
    return {"area": area, "name": name, "unit": "ms", "impls": ["diffblocks", "diffusers"], "stats": stats,
            "ratio": median / 2.0, "target": 1.0, "description": f"{name} desc", "errors": [], "measured": "now"}


def test_only_run_keeps_markdown_rows_without_results_json(tmp_path):
    run = _run_module()
    md = tmp_path / "RESULTS.md"
    run.write_results(str(md), [_row("a", "x", 1.0), _row("b", "y", 3.0)], {"cpu": "test"}, 3)
    before = md.read_text()
    # a fresh checkout: no results.json; only b/y is measured again
    merged = run.merge_previous([_row("b", "y", 1.5)], str(tmp_path / "missing.json"), str(md))
    assert [(r["area"], r["name"]) for r in merged] == [("a", "x"), ("b", "y")]
    run.write_results(str(md), merged, {"cpu": "test"}, 3)
    after = md.read_text()
    kept = [line for line in before.splitlines() if line.startswith("| a | x |")]
    assert kept and kept[0] in after.splitlines()  # the unmeasured row is kept verbatim
    assert "| b | y | ms | diffblocks | 1.5 " in after and "- **a/x**: x desc" in after
    # results.json rows win over markdown rows for the same case
    js = tmp_path / "results.json"
    js.write_text(json.dumps([_row("a", "x", 0.5)]))
    merged = run.merge_previous([_row("b", "y", 1.5)], str(js), str(md))
    assert merged[0]["stats"][0]["median"] == 0.5 and "raw" not in merged[0]
