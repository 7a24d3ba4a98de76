"""Run the benchmark cases in ``bench/cases/*.py`` and write ``bench/RESULTS.md``.

Each case file is a script with two entry points:

* ``python bench/cases/<area>.py --list`` prints a JSON list of
  ``{"name", "unit", "target", "impls": [ours, reference], "description"}``;
* ``python bench/cases/<area>.py --case NAME --impl IMPL`` does its setup and one measurement in that fresh
  process and prints ``{"value": <float>}`` as its last stdout line.

This runner measures every (case, impl) ``--repeat`` times (or the case's own ``"repeat"`` when larger: cases
whose result varies from process to process, such as the per-step overhead ones, ask for more runs), each time in
a new process, alternating the implementations so that machine drift hits both alike, and reports the median,
min-max and the ratio of the medians (ours / reference) against the case's target.

Usage: ``python bench/run.py [--repeat 3] [--only PATTERN] [--out bench/RESULTS.md] [--list]``
(with ``--only``, the rows of cases not re-measured are kept from the previous run, with their date).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
CASES_DIR = os.path.join(HERE, "cases")
WORK_DIR = os.path.join(HERE, "_work")


def discover(cases_dir: str = CASES_DIR) -> List[str]:
    """Case scripts: ``cases/*.py`` except private (``_*``) files."""
    if not os.path.isdir(cases_dir):
        return []
    return sorted(
        os.path.join(cases_dir, f) for f in os.listdir(cases_dir)
        if f.endswith(".py") and not f.startswith("_")
    )


def _last_json_line(text: str) -> Optional[dict]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") or line.startswith("["):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def list_cases(script: str, timeout: float = 120) -> List[Dict[str, Any]]:
    proc = subprocess.run([sys.executable, script, "--list"], capture_output=True, text=True, timeout=timeout,
                          cwd=os.path.dirname(HERE))
    if proc.returncode != 0:
        raise RuntimeError(f"{script} --list failed:\n{proc.stderr[-2000:]}")
    out = proc.stdout.strip()
    try:
        cases = json.loads(out)
    except json.JSONDecodeError:
        cases = _last_json_line(out)
    if not isinstance(cases, list):
        raise RuntimeError(f"{script} --list did not print a JSON list")
    for case in cases:
        missing = {"name", "unit", "impls"} - set(case)
        if missing:
            raise RuntimeError(f"{script}: case {case!r} lacks {sorted(missing)}")
    return cases


def measure(script: str, case: str, impl: str, timeout: float) -> Dict[str, Any]:
    """One measurement in a fresh interpreter: ``{"value": float}`` or ``{"error": str}``."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, script, "--case", case, "--impl", impl], capture_output=True,
                              text=True, timeout=timeout, cwd=os.path.dirname(HERE))
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    result = _last_json_line(proc.stdout) if proc.returncode == 0 else None
    if not isinstance(result, dict) or not isinstance(result.get("value"), (int, float)):
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    result["wall"] = time.perf_counter() - start
    return result


def _fmt(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.3g}"
    return f"{x:.3g}"


def summarise(values: List[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


#: the columns of the results table (written by write_results, read back by rows_from_markdown)
COLUMNS = ("area", "case", "unit", "ours", "median (min-max)", "reference", "median (min-max)", "ratio", "target",
           "met", "measured (UTC)")


def rows_from_markdown(path: str) -> List[Dict[str, Any]]:
    """The rows of a RESULTS.md written earlier, kept verbatim (``raw``) with their case descriptions."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    descriptions = {}
    for line in text.splitlines():
        if line.startswith("- **") and "**: " in line:
            key, desc = line[4:].split("**: ", 1)
            descriptions[key] = desc
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != len(COLUMNS) or cells[0] in ("area", "") or cells[0].startswith("---"):
            continue
        rows.append({"area": cells[0], "name": cells[1], "raw": line,
                     "description": descriptions.get(f"{cells[0]}/{cells[1]}")})
    return rows


def merge_previous(rows: List[Dict[str, Any]], path: str, markdown: Optional[str] = None) -> List[Dict[str, Any]]:
    """With ``--only``: keep the previous run's rows for the cases that were not measured this time, from
    ``results.json`` and, for cases it lacks (a fresh checkout has no results.json), from the markdown file."""
    try:
        with open(path, encoding="utf-8") as f:
            previous = [r for r in json.load(f) if isinstance(r, dict)]
    except (OSError, json.JSONDecodeError):
        previous = []
    known = {(r.get("area"), r.get("name")) for r in previous}
    if markdown is not None:
        previous += [r for r in rows_from_markdown(markdown) if (r["area"], r["name"]) not in known]
    fresh = {(r["area"], r["name"]) for r in rows}
    kept = [r for r in previous if (r.get("area"), r.get("name")) not in fresh]
    return sorted(kept + rows, key=lambda r: (r["area"], r["name"]))


def machine_info() -> Dict[str, str]:
    info = {
        "date (UTC)": _now(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu count": str(os.cpu_count()),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as f:
            kb = int(f.readline().split()[1])
            info["memory"] = f"{kb / 2**20:.1f} GiB"
    except OSError:
        pass
    try:
        os_load = os.getloadavg()
        info["load average (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os_load)
    except OSError:
        pass
    for mod in ("torch", "diffusers", "transformers", "safetensors", "diffblocks"):
        proc = subprocess.run([sys.executable, "-c", f"import {mod}; print({mod}.__version__)"],
                              capture_output=True, text=True)
        info[mod] = proc.stdout.strip() or "not installed"
    return info


def write_results(path: str, rows: List[Dict[str, Any]], info: Dict[str, str], repeat: int) -> None:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python bench/run.py` ({repeat} runs per implementation, more where a case asks for them "
        "(the per-step overhead cases: 5), each in a fresh process; median and min-max). `ratio` = median(ours) / "
        "median(reference); `met` = ratio <= target.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        if "raw" in r:  # a row kept from an earlier RESULTS.md
            lines.append(r["raw"])
            continue
        ours, ref = r["stats"][0], r["stats"][1] if len(r["stats"]) > 1 else None
        ratio = r.get("ratio")
        target = r.get("target")
        met = "-" if ratio is None or target is None else ("yes" if ratio <= target else "**no**")
        cell = lambda s: "-" if s is None or s["median"] is None else \
            f"{_fmt(s['median'])} ({_fmt(s['min'])}-{_fmt(s['max'])})"  # noqa: E731
        lines.append(
            f"| {r['area']} | {r['name']} | {r['unit']} | {r['impls'][0]} | {cell(ours)} | "
            f"{r['impls'][1] if len(r['impls']) > 1 else '-'} | {cell(ref)} | "
            f"{'-' if ratio is None else f'{ratio:.3f}'} | {'-' if target is None else target} | {met} "
            f"| {r.get('measured', '-')} |"
        )
    errors = [(r, e) for r in rows for e in r.get("errors", [])]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {r['area']}/{r['name']} [{impl}]: {msg}" for r, (impl, msg) in errors]
    described = [r for r in rows if r.get("description")]
    if described:
        lines += ["", "## Cases", ""]
        lines += [f"- **{r['area']}/{r['name']}**: {r['description']}" for r in described]
    lines += ["", "## Machine", ""] + [f"- {k}: {v}" for k, v in info.items()] + [""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run diffblocks benchmarks (each measurement in a fresh process).")
    parser.add_argument("--repeat", type=int, default=3, help="runs per implementation (default 3)")
    parser.add_argument("--only", default=None,
                        help="run cases whose 'area/name' matches this glob or contains this substring")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"), help="results file (markdown)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per measurement")
    parser.add_argument("--list", action="store_true", help="only list the discovered cases")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")

    os.makedirs(WORK_DIR, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    for script in discover():
        area = os.path.splitext(os.path.basename(script))[0]
        try:
            cases = list_cases(script)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"[bench] {area}: cannot list cases: {e}", file=sys.stderr)
            rows.append({"area": area, "name": "(list)", "unit": "-", "impls": ["-", "-"], "stats": [None, None],
                         "errors": [("-", str(e).splitlines()[0])]})
            continue
        for case in cases:
            key = f"{area}/{case['name']}"
            if args.only and not (fnmatch.fnmatch(key, args.only) or args.only in key):
                continue
            if args.list:
                print(f"{key}  impls={case['impls']}  unit={case['unit']}  target={case.get('target')}")
                continue
            impls = list(case["impls"])
            values: Dict[str, List[float]] = {i: [] for i in impls}
            errors = []
            for run in range(max(args.repeat, int(case.get("repeat", 0)))):
                order = impls if run % 2 == 0 else list(reversed(impls))
                for impl in order:
                    res = measure(script, case["name"], impl, args.timeout)
                    if "error" in res:
                        errors.append((impl, res["error"]))
                        print(f"[bench] {key} [{impl}] run {run + 1}: ERROR {res['error']}", file=sys.stderr)
                    else:
                        values[impl].append(float(res["value"]))
                        print(f"[bench] {key} [{impl}] run {run + 1}: {res['value']:.6g} {case['unit']}",
                              file=sys.stderr)
            stats = [summarise(values[i]) for i in impls]
            ratio = None
            if len(stats) > 1 and stats[0]["median"] is not None and stats[1]["median"]:
                ratio = stats[0]["median"] / stats[1]["median"]
            rows.append({"area": area, "name": case["name"], "unit": case["unit"], "impls": impls, "stats": stats,
                         "ratio": ratio, "target": case.get("target"), "description": case.get("description"),
                         "errors": errors, "values": values, "measured": _now()})
    if args.list:
        return 0
    rows = merge_previous(rows, os.path.join(WORK_DIR, "results.json"), args.out) if args.only else rows
    write_results(args.out, rows, machine_info(), args.repeat)
    with open(os.path.join(WORK_DIR, "results.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2, default=str)
    print(f"[bench] wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
