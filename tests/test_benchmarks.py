"""The shared benchmark method (benchmarks/_method.py) and its use by every benchmark script."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _method():
    spec = importlib.util.spec_from_file_location("_bench_method", BENCH / "_method.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_compare_warms_up_alternates_and_reports_min_and_median():
    m = _method()
    calls = []
    t = m.compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, warmup=1)
    # one warm-up of each, then a-b, b-a, a-b, b-a
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(t["a"].times) == len(t["b"].times) == 4
    assert t["a"].min <= t["a"].median
    assert t["a"].load.startswith("load ")
    line = t["a"].line()
    assert "min" in line and "median" in line and "load" in line


def test_a_variant_can_report_its_own_timed_part():
    m = _method()
    t = m.compare({"x": lambda: m.Seconds(2.5)}, repeats=3, warmup=0)
    assert t["x"].times == [2.5, 2.5, 2.5]
    assert "2.00x" in m.ratio_line("r", m.Timing("s", [5.0] * 3, "load 0"), t["x"])


def test_fewer_than_three_repeats_are_refused():
    m = _method()
    with pytest.raises(SystemExit):
        m.parse(m.parser("x"), ["--repeats", "2"])
    assert m.parse(m.parser("x"), ["--quick"]).quick


def test_every_benchmark_uses_the_shared_method():
    scripts = [p for p in BENCH.glob("*.py") if not p.name.startswith("_")]
    assert len(scripts) >= 7
    for p in scripts:
        src = p.read_text()
        assert "from _method import" in src, f"{p.name} does not use benchmarks/_method.py"
        assert re.search(r"\bparse\(", src) and "--quick" in src, f"{p.name}: no --quick / shared parser"


@pytest.mark.slow
def test_a_quick_benchmark_runs_and_prints_the_method(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, str(BENCH / "ranked_bench.py"), "--quick"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "command: python" in out.stdout and "(n=3)" in out.stdout
    assert re.search(r"min .* median .* \[load \d", out.stdout)
    assert re.search(r"per image / batched: \d+\.\d+x \(min/min\)", out.stdout)
