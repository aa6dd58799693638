"""The plugin registry: lazy discovery, did-you-mean, in-process registration, contested names, broken plugins.

Installed distributions are simulated with ``*.dist-info`` folders on ``sys.path`` (what pip writes),
so these tests need no pip and run in well under a second.
"""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from sgq_bench import _registry
from sgq_bench._base import Metric, MetricResult, Quantizer
from sgq_bench._registry import Registry, check_kind
from sgq_bench.errors import UsageError


def fake_distribution(root: Path, dist: str, version: str, entry_points: dict[str, dict[str, str]],
                      modules: dict[str, str] | None = None) -> None:
    """Write a dist-info (and optional modules) under ``root`` as pip would for an installed package."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {ref}" for name, ref in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


GOOD = """
from sgq_bench._base import Metric, MetricResult

class Good(Metric):
    '''A fine metric.'''
    family = "sparsity"
    needs_attributions = False

    def compute(self, ctx, attributions):
        return MetricResult(1.0)
"""

BROKEN = """
import sgq_bench
IMPORTED = True
raise RuntimeError("this plugin is broken on purpose")
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A temporary site dir on sys.path; modules written there are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("sgqtest_"):
            del sys.modules[name]


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UsageError, match=r"unknown quantizer 'pakt'\. Did you mean 'pact'\?"):
        _registry.quantizers.get("pakt")
    with pytest.raises(UsageError, match="unknown plugin kind 'metric'.*'metrics'"):
        _registry.registry("metric")


def test_in_process_registration_decorator_and_call():
    reg = Registry("metrics")

    @reg.register("toy")
    class Toy(Metric):
        """Toy metric."""

        def compute(self, ctx, attributions):
            return MetricResult(0.0)

    assert reg.get("toy") is Toy
    entry = reg.entry("toy")
    assert entry.in_process and entry.provenance()["name"] == "toy"

    class Named(Metric):
        name = "named_metric"

    reg.register(obj=Named)  # name taken from the class
    assert "named_metric" in reg.names()
    with pytest.raises(UsageError, match="already registered.*replace=True"):
        reg.register("toy", Named)
    reg.register("toy", Named, replace=True)
    assert reg.get("toy") is Named
    reg.unregister("toy")
    assert "toy" not in reg


def test_registration_checks_the_kind():
    reg = Registry("quantizers")
    with pytest.raises(UsageError, match="expected a subclass of sgq_bench._base.Quantizer"):
        reg.register("bad", Metric)
    with pytest.raises(UsageError, match="without spaces"):
        reg.register("two words", Quantizer)
    assert check_kind("models", lambda dataset: None) is None
    assert "callable" in check_kind("models", 3)


def test_registered_class_of_an_installed_package_carries_its_version():
    reg = Registry("quantizers")
    from sgq_bench.builtin.quantizers import NoQuantizer

    reg.register("none_again", NoQuantizer)
    entry = reg.entry("none_again")
    assert entry.distribution == "sgq-bench" and entry.version


def test_discovery_does_not_import_and_broken_plugin_is_reported_once(site):
    fake_distribution(site, "sgq-test-broken", "0.0.1",
                      {"sgq_bench.metrics": {"good": "sgqtest_good:Good", "exploding": "sgqtest_broken:Thing"}},
                      {"sgqtest_good": GOOD, "sgqtest_broken": BROKEN})
    reg = Registry("metrics")
    assert {"good", "exploding"} <= set(reg.names())
    assert "sgqtest_broken" not in sys.modules and "sgqtest_good" not in sys.modules
    entry = reg.peek("exploding")
    assert (entry.distribution, entry.version) == ("sgq-test-broken", "0.0.1")

    assert reg.get("good").__name__ == "Good"  # a sibling of a broken plugin still works
    with pytest.warns(RuntimeWarning) as record:  # enumerating: one warning, however often
        rows = reg.items()
        assert "exploding" not in reg.usable() and "good" in reg.usable()
    assert len(record) == 1 and "'exploding'" in str(record[0].message)
    assert [name for name, obj, _ in rows if obj is None] == ["exploding"]
    with warnings.catch_warnings():  # asking for it: the error is the report, and import is not retried
        warnings.simplefilter("error")
        for _ in range(2):
            with pytest.raises(UsageError, match="'exploding' from distribution 'sgq-test-broken'.*on purpose"):
                reg.get("exploding")


def test_listing_shows_broken_plugin_without_a_second_warning(site):
    fake_distribution(site, "sgq-test-broken", "0.0.1", {"sgq_bench.metrics": {"exploding": "sgqtest_broken2:X"}},
                      {"sgqtest_broken2": BROKEN})
    reg = Registry("metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = reg.items(warn=False)
    (row,) = [r for r in rows if r[0] == "exploding"]
    assert row[1] is None and "RuntimeError: this plugin is broken on purpose" in row[2].error


def test_wrong_type_from_entry_point_is_reported(site):
    fake_distribution(site, "sgq-test-wrong", "1.0", {"sgq_bench.quantizers": {"notaq": "sgqtest_good3:Good"}},
                      {"sgqtest_good3": GOOD})
    reg = Registry("quantizers")
    with pytest.raises(UsageError, match="expected a subclass of .*Quantizer"):
        reg.get("notaq")


def test_two_distributions_claiming_one_name_names_both(site):
    fake_distribution(site, "sgq-test-alpha", "1.0", {"sgq_bench.metrics": {"shared": "sgqtest_good4:Good",
                                                                            "only_alpha": "sgqtest_good4:Good"}},
                      {"sgqtest_good4": GOOD})
    fake_distribution(site, "sgq-test-beta", "2.0", {"sgq_bench.metrics": {"shared": "sgqtest_good4:Good"}})
    reg = Registry("metrics")
    assert "shared" in reg.names()  # listing works
    with pytest.raises(UsageError) as info:
        reg.get("shared")
    assert "sgq-test-alpha" in str(info.value) and "sgq-test-beta" in str(info.value)
    assert reg.get("only_alpha").__name__ == "Good"  # the rest of both packages stays usable


def test_refresh_sees_a_plugin_installed_mid_process(site):
    reg = Registry("metrics")
    reg.register("kept", type("Kept", (Metric,), {}))
    assert "late" not in reg
    fake_distribution(site, "sgq-test-late", "0.3", {"sgq_bench.metrics": {"late": "sgqtest_good5:Good"}},
                      {"sgqtest_good5": GOOD})
    reg.refresh()
    assert "late" in reg and "kept" in reg
    assert reg.entry("late").version == "0.3"
