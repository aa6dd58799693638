"""A plan that stays true: a calibration timed on a loaded CPU must not inflate later plans.

Each cached timing records when it was taken, the load average and a reference probe; a later plan
re-times the probe and rescales the entry by probe now / probe then, says how old its calibration is, and
warns when it looks stale. ``run --plan --recalibrate`` times it again; an older cache still loads.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone

import pytest
from _cli_helpers import invoke, one_error_line

import sgq_bench.orchestration.calibration as cal
from sgq_bench.data import cache_dir
from sgq_bench.orchestration.plan import format_plan, plan_suite

ONLY = "method=baseline"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of this test's own (conftest's is shared by the session: another test's calibration)."""
    monkeypatch.setenv("SGQ_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _plan(tmp_path, **kw):
    return plan_suite("smoke", only=ONLY, checkpoint_dir=tmp_path / "ck", out=tmp_path / "run", **kw)


def _timed(total: dict) -> float:
    """The plan's seconds that rest on the calibration (train, retrain, evaluate: all of it here)."""
    return total["total_s"]


def _loaded(m: pytest.MonkeyPatch, k: float) -> None:
    """Every timed call, the steps and the reference probe alike, takes k times as long: a CPU shared k ways.
    The sleep is a busy wait: a real sleep gives the core away, and the wake-up on a loaded machine slows a
    step of many small ops far more than k times (9x a test_cnn step, 4x the probe, for k = 3)."""
    real_time, real_work = cal._time, cal._reference_work

    def stretch(fn):
        def slow(*args):
            t0 = time.perf_counter()
            fn(*args)
            end = time.perf_counter() + (k - 1) * (time.perf_counter() - t0)
            while time.perf_counter() < end:
                pass
        return slow

    m.setattr(cal, "_time", lambda fn, dev: real_time(stretch(fn), dev))
    m.setattr(cal, "_reference_work", stretch(real_work))


def test_a_calibration_under_load_does_not_inflate_a_later_plan(tmp_path, monkeypatch, caplog):
    # 20 timed steps, not 5: on a shared CPU, two calibrations of 5 test_cnn steps (35 ms) differ by up to
    # 1.5x with nothing changed; this test is about the rescale, not that noise
    monkeypatch.setattr(cal, "CALIBRATION_STEPS", 20)
    monkeypatch.setenv("SGQ_BENCH_CACHE", str(tmp_path / "loaded"))
    with monkeypatch.context() as m:
        _loaded(m, 5.0)
        loaded = _plan(tmp_path)  # timed now, under the slow-down: that plan is right to be slow
    assert loaded["calibration"].startswith("calibration: ") and "taken now" in loaded["calibration"]
    assert loaded["stale"] is None
    caplog.set_level(logging.WARNING, logger="sgq_bench")
    later = _plan(tmp_path, log=lambda s: pytest.fail(f"recalibrated: {s}"))  # the cache, on the idle CPU
    monkeypatch.setenv("SGQ_BENCH_CACHE", str(tmp_path / "idle"))
    fresh = _plan(tmp_path)  # the truth: a calibration on the idle CPU, right after
    assert _timed(loaded) > 3 * _timed(fresh), (loaded, fresh)  # the slow-down took
    # a 5x slow-down, and a bound of 2x: without the rescale the later plan is the loaded one (~5x); with
    # it, within the noise of two calibrations on a shared 2-core CI box (measured up to 1.46x; 1.25x failed)
    assert _timed(later) <= 2.0 * _timed(fresh), (later["calibration"], _timed(later), _timed(fresh))
    assert _timed(later) <= 0.5 * _timed(loaded), (later["calibration"], _timed(later), _timed(loaded))
    assert "cached, taken " in later["calibration"] and " by the reference probe " in later["calibration"]
    assert "rescaled x0." in later["calibration"]
    assert later["stale"] and later["stale"] in later["notes"] and "use --recalibrate" in later["stale"]
    assert [r.getMessage() for r in caplog.records if r.name == "sgq_bench.plan"] == [later["stale"]]


def test_rescale_age_and_load_are_reported(cache, monkeypatch):
    """The arithmetic, with the probe and load fixed: x0.50, and each reason the plan gives to retime."""
    from sgq_bench.config.suite import load_suite
    from sgq_bench.orchestration.cells import expand
    from sgq_bench.train import resolve_device, resolve_precision

    spec = expand(load_suite("smoke"), {"method": {"baseline"}})[0].spec
    dev = resolve_device("cpu")
    key = cal._calibration_key(spec, dev, resolve_precision(spec.recipe, dev))
    taken = (datetime.now(timezone.utc) - timedelta(days=30)).isoformat(timespec="seconds")
    store = {key: {"step_s": 1.0, "fwd_img_s": 0.01, "grad_img_s": 0.02},
             cal.CONDITIONS: {key: {"taken": taken, "load1": 4.0, "probe_s": 0.004}}}
    cache.mkdir(parents=True)
    (cache / "calibration.json").write_text(json.dumps(store))
    monkeypatch.setattr(cal, "_load1", lambda: 1.0)
    monkeypatch.setattr(cal, "reference_probe", lambda dev: 0.002)
    costs = cal.MeasuredCosts("cpu", measure=False)
    t = costs.timing(spec)
    assert (t.step_s, t.fwd_img_s, t.grad_img_s) == (0.5, 0.005, 0.01)
    line, stale = costs.describe()
    assert line == ("calibration: 1 cached, taken 30.0 d ago under load 4.0 (now 1.0), rescaled x0.50 by the "
                    "reference probe (4.0 ms then, 2.0 ms now)")
    assert stale == ("calibration may be stale (reference probe x0.50 of the calibration's; load 4.0 then, 1.0 "
                     "now; taken 30.0 d ago); prices rescaled by the reference probe; use --recalibrate to retime")
    monkeypatch.setattr(cal, "reference_probe", lambda dev: 0.0042)  # within the probe's noise: as measured
    monkeypatch.setattr(cal, "_load1", lambda: 4.2)
    store[cal.CONDITIONS][key]["taken"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (cache / "calibration.json").write_text(json.dumps(store))
    costs = cal.MeasuredCosts("cpu", measure=False)
    assert costs.timing(spec).step_s == 1.0 and costs.describe()[1] is None
    assert "rescaled x1.00" in costs.describe()[0]


def test_an_old_cache_without_conditions_still_loads(tmp_path, cache):
    """Entries of an older version (no "_conditions"): used as measured (factor 1), and the plan says so;
    and a file written now still reads as the old format (each entry by key, the same three numbers)."""
    first = _plan(tmp_path)
    store = json.loads((cache / "calibration.json").read_text())
    keys = [k for k in store if not k.startswith("_")]
    assert keys and set(store[cal.CONDITIONS]) == set(keys)
    assert all(set(store[k]) == {"step_s", "fwd_img_s", "grad_img_s"} for k in keys)  # the old reader's Timing(**)
    old = {k: store[k] for k in keys}
    (cache / "calibration.json").write_text(json.dumps(old))
    text = format_plan("smoke", only=ONLY, checkpoint_dir=tmp_path / "ck", out=tmp_path / "run",
                       log=lambda s: pytest.fail(f"recalibrated: {s}"))
    assert f"calibration: {len(keys)} cached: calibration of unknown age; use --recalibrate" in text.splitlines()
    again = _plan(tmp_path)
    assert again["total_s"] == pytest.approx(first["total_s"], rel=1e-9) and again["stale"] is None
    assert json.loads((cache / "calibration.json").read_text()) == old  # read, not rewritten


def test_recalibrate_retimes_through_the_cli(tmp_path, cache):
    args = ["run", "--suite", "smoke", "--plan", "--only", ONLY, "--checkpoint-dir", str(tmp_path / "ck"),
            "--out", str(tmp_path / "run")]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert "timing(s) taken now" in res.stdout
    path = cache_dir() / "calibration.json"
    store = json.loads(path.read_text())
    keys = [k for k in store if not k.startswith("_")]
    for k in keys:  # an absurd cached timing, of unknown age
        store[k] = {f: v * 1000 for f, v in store[k].items()}
    del store[cal.CONDITIONS]
    path.write_text(json.dumps(store))
    res = invoke(*args)
    assert res.exit_code == 0 and "calibration of unknown age; use --recalibrate" in res.stdout, res.output
    res = invoke(*args, "--recalibrate")
    assert res.exit_code == 0 and f"calibration: {len(keys)} timing(s) taken now" in res.stdout, res.output
    now = json.loads(path.read_text())
    assert set(now[cal.CONDITIONS]) == set(keys)
    assert all(now[k]["step_s"] < store[k]["step_s"] / 10 for k in keys)  # overwritten by a real timing
    res = invoke("run", "--suite", "smoke", "--recalibrate")
    assert res.exit_code == 2 and "--recalibrate" in one_error_line(res) and "--plan" in one_error_line(res)
