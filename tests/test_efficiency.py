"""Efficiency metrics: hand-computed size and BOPs, labelled timing and memory rows (no absolute times)."""

from __future__ import annotations

import math

import pytest
import torch
from sgq_bench.builtin.quantizers import NoQuantizer, PACTQuantizer

from sgq_bench import Param, Quantizer, _registry, register
from sgq_bench import deploy as dp
from sgq_bench._base import Bits, EvalContext, layer_bits, mark_quantized
from sgq_bench.cli.train import spec_from_argv
from sgq_bench.config.methods import Method
from sgq_bench.data import MNIST, Synthetic, load_split
from sgq_bench.errors import UsageError
from sgq_bench.metrics.efficiency import count_bops, packed_size
from sgq_bench.models import mnist_cnn, test_cnn
from sgq_bench.specs import ExecContext
from sgq_bench.train import load_or_train

EFFICIENCY = ("params", "size_bytes", "compression", "bops", "latency_ms", "throughput", "peak_memory_mb")


def test_size_bytes_of_w4a4_mnist_cnn_by_hand() -> None:
    model = PACTQuantizer(w_bits=4, a_bits=4).prepare(mnist_cnn(MNIST()))
    conv1 = (32 * 1 * 3 * 3 + 32) * 4  # float first layer, weight and bias at 32 bits: 1280
    conv2 = 64 * 32 * 3 * 3 * 4 // 8 + 64 * 4 + 4  # 18432 weights at 4 bits, fp32 bias, fp32 scale: 9476
    fc1 = 9216 * 128 * 4 // 8 + 128 * 4 + 4  # 1179648 weights at 4 bits: 590340
    fc2 = (10 * 128 + 10) * 4  # float last layer: 5160
    alphas = 3 * 4  # relu2, relu3 (4-bit) and relu1 (the 8-bit boundary PACT after the float conv1)
    assert conv1 + conv2 + fc1 + fc2 + alphas == 606268
    ctx = EvalContext(model=model, dataset=MNIST(), x=torch.zeros(1, 1, 28, 28), y=torch.zeros(1),
                      device=torch.device("cpu"), quantizer=PACTQuantizer())
    assert _registry.metrics.get("size_bytes")().compute(ctx).value == 606268
    fp32 = (1 * 9 * 32 + 32 + 32 * 9 * 64 + 64 + 9216 * 128 + 128 + 128 * 10 + 10) * 4
    assert _registry.metrics.get("compression")().compute(ctx).value == pytest.approx(fp32 / 606268)
    assert _registry.metrics.get("params")().compute(ctx).value == fp32 // 4 + 3


def test_size_of_a_float_model_is_four_bytes_per_parameter() -> None:
    model = test_cnn(Synthetic())
    assert packed_size(model)["total"] == 4 * sum(p.numel() for p in model.parameters())


def test_bops_of_w4a4_test_cnn_by_hand() -> None:
    model = PACTQuantizer(w_bits=4, a_bits=4).prepare(test_cnn(Synthetic()))  # 1x16x16 in, 4 classes
    conv1 = (8 * 16 * 16) * (1 * 3 * 3) * 32 * 32  # float: 18432 MACs
    conv2 = (16 * 16 * 16) * (8 * 3 * 3) * 4 * 8  # 294912 MACs at W4 x A8 (input: the 8-bit boundary PACT)
    fc1 = 32 * (16 * 4 * 4) * 4 * 4  # after MaxPool(4): 256 features -> 32, input from a 4-bit PACT
    fc2 = 4 * 32 * 32 * 32  # float last layer
    assert conv1 + conv2 + fc1 + fc2 == 28573696
    res = count_bops(model, torch.randn(5, 1, 16, 16), act_bits=4)
    assert res["bops"] == 28573696 and res["macs"] == 18432 + 294912 + 8192 + 128
    assert [r["layer"] for r in res["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    ctx = EvalContext(model=model, dataset=Synthetic(), x=torch.randn(3, 1, 16, 16), y=torch.zeros(3),
                      device=torch.device("cpu"), quantizer=PACTQuantizer(w_bits=4, a_bits=4))
    assert _registry.metrics.get("bops")().compute(ctx).value == 28573696
    plain = PACTQuantizer(w_bits=4, a_bits=4, boundary_bits=0).prepare(test_cnn(Synthetic()))
    assert count_bops(plain, torch.randn(1, 1, 16, 16), act_bits=4)["bops"] == 28573696 - 294912 * 4 * 4


class _Marked(Quantizer):
    """A plugin quantizer that only declares bits: conv2/fc1 weights at w_bits, relu2/relu3 at a_bits."""

    name = "marked_test"
    params = {"w_bits": Param(2, "weight bits", low=1, high=32), "a_bits": Param(6, "act bits", low=1, high=32)}

    def declared_bits(self) -> Bits:
        return Bits(self.w_bits, self.a_bits)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        for name in ("conv2", "fc1"):
            mark_quantized(model.get_submodule(name), weight_bits=self.w_bits)
        for name in ("relu2", "relu3"):
            mark_quantized(model.get_submodule(name), act_bits=self.a_bits)
        return model


class _Unmarked(_Marked):
    name = "unmarked_test"

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


def test_a_plugin_declaring_bits_gets_size_bops_and_label_from_the_declaration() -> None:
    register("quantizers", obj=_Marked, replace=True)
    try:
        q = _Marked()
        model = q.prepare(test_cnn(Synthetic()))  # 1x16x16 in, 4 classes; computes in float, declares W2A6
        assert not any(hasattr(m, "weight_bits") or hasattr(m, "act_bits") for m in model.modules())
        ctx = EvalContext(model=model, dataset=Synthetic(), x=torch.randn(3, 1, 16, 16), y=torch.zeros(3),
                          device=torch.device("cpu"), quantizer=q)
        conv1, fc2 = (8 * 9 + 8) * 4, (4 * 32 + 4) * 4  # float, 32 bits
        conv2 = 16 * 8 * 9 * 2 // 8 + 16 * 4 + 4  # weights at 2 bits, fp32 bias, one fp32 scale
        fc1 = 32 * 256 * 2 // 8 + 32 * 4 + 4
        size = conv1 + conv2 + fc1 + fc2
        assert _registry.metrics.get("size_bytes")().compute(ctx).value == size == 3384
        fp32 = 4 * sum(p.numel() for p in model.parameters())
        assert _registry.metrics.get("compression")().compute(ctx).value == pytest.approx(fp32 / size)
        # conv2's input has no declared activation quantizer before it: the quantizer's declared 6 bits
        bops = 18432 * 32 * 32 + 294912 * 2 * 6 + 8192 * 2 * 6 + 128 * 32 * 32
        res = _registry.metrics.get("bops")().compute(ctx)
        assert res.value == bops and res.extra["act_bits"] == 6
        assert Method("toy", "marked_test", "cross_entropy").label() == "toy W2A6"
        assert Method("toy", "marked_test", "cross_entropy", {"w_bits": 32, "a_bits": 32}).label() == "toy"
    finally:
        _registry.quantizers.unregister("marked_test")


def test_a_quantizer_that_marks_no_layer_gets_undefined_size_not_float() -> None:
    q = _Unmarked()
    ctx = EvalContext(model=q.prepare(test_cnn(Synthetic())), dataset=Synthetic(), x=torch.randn(2, 1, 16, 16),
                      y=torch.zeros(2), device=torch.device("cpu"), quantizer=q)
    for name in ("size_bytes", "compression", "bops"):
        res = _registry.metrics.get(name)().compute(ctx)
        assert math.isnan(res.value) and "marked no layer" in res.extra["undefined_reason"], name


def test_a_quantizer_that_marks_no_layer_is_refused_when_its_model_is_built() -> None:
    """Before any training: one line naming the quantizer and what it must do."""
    from sgq_bench.errors import PluginError
    from sgq_bench.train import _check_declared_bits

    q = _Unmarked()
    with pytest.raises(PluginError, match=r"declares W.*marked no layer.*mark_quantized"):
        _check_declared_bits(q, q.prepare(test_cnn(Synthetic())))


def test_the_old_bits_method_is_refused_with_the_new_contract() -> None:
    with pytest.raises(TypeError, match="declared_bits"):
        type("Old", (Quantizer,), {"name": "old", "bits": lambda self: (4, 4)})


def test_mark_quantized_checks_its_module() -> None:
    with pytest.raises(ValueError, match="no `weight`"):
        mark_quantized(torch.nn.ReLU(), weight_bits=4)
    with pytest.raises(ValueError, match=r"\[1, 32\]"):
        mark_quantized(torch.nn.ReLU(), act_bits=0)
    assert layer_bits(torch.nn.ReLU()) is None
    assert layer_bits(mark_quantized(torch.nn.ReLU(), act_bits=4)) == Bits(32, 4)


def test_bops_count_layers_as_often_as_they_run() -> None:
    lin = torch.nn.Linear(3, 3)
    twice = torch.nn.Sequential(lin, torch.nn.ReLU(), lin)  # one module, two calls
    assert count_bops(twice, torch.randn(1, 3), 32)["macs"] == 2 * 9


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EvalContext]:
    """Trained smoke cells (synthetic, test_cnn) for pact and baseline."""
    out = {}
    ckpt = tmp_path_factory.mktemp("ckpt")
    for method in ("pact", "baseline"):
        args = (["--dataset", "synthetic", "--suite", "smoke", "--method", method,
                                          "--train-size", "512", "--epochs", "1"])
        spec = spec_from_argv(args)
        model = load_or_train(spec, ExecContext(checkpoint_dir=ckpt, progress=False)).model.eval()
        ds = Synthetic(**spec.dataset_params)
        test = load_split(ds, False)
        q, _ = spec.method.build()
        out[method] = EvalContext(model=model, dataset=ds, x=ds.normalize(test.images[:64]), y=test.labels[:64],
                                  device=torch.device("cpu"), spec=spec, quantizer=q)
    return out


@pytest.mark.skipif(not dp.available_engines(), reason="no quantized CPU engine in this torch")
def test_latency_and_throughput_rows_are_labelled(cells: dict[str, EvalContext]) -> None:
    ctx = cells["pact"]
    lat = _registry.metrics.get("latency_ms")(batch_sizes="1,16").compute(ctx)
    thr = _registry.metrics.get("throughput")(batch_sizes="1,16").compute(ctx)
    expected = {f"{v}@bs{b}" for v in ("fp32", "fp32_channels_last", "fake_quant", "int8") for b in (1, 16)}
    assert {r.variant for r in lat} == expected == {r.variant for r in thr}
    for row in lat:
        assert row.value > 0
        for key in ("device", "cpu_model", "threads", "torch_version", "quantized_backend", "runs", "speedup_vs_fp32",
                    "runtime", "precision", "layout", "speedup_vs_fp32_eager", "speedup_vs_fp32_same_runtime"):
            assert key in row.extra, key
        assert row.extra["threads"] == 1 and row.extra["runs"] == 30
        assert row.extra["quantized_backend"].startswith("torch.ao/")
    by_variant = {r.variant: r.value for r in lat}
    for row in thr:  # same measurement, shared through ctx.cache: throughput = batch / latency
        bs = row.extra["batch_size"]
        assert row.value == pytest.approx(bs / by_variant[row.variant] * 1e3)
    lat_cls = _registry.metrics.get("latency_ms")
    assert lat_cls.family == "efficiency" and not lat_cls.higher_is_better and not lat_cls.needs_attributions


def test_float_cell_reports_fp32_only(cells: dict[str, EvalContext]) -> None:
    ctx = cells["baseline"]
    assert isinstance(ctx.quantizer, NoQuantizer)
    rows = _registry.metrics.get("latency_ms")(batch_sizes="2").compute(ctx)
    assert [r.variant for r in rows] == ["fp32@bs2", "fp32_channels_last@bs2"]
    assert [r.extra["layout"] for r in rows] == ["NCHW", "channels-last"]
    assert _registry.metrics.get("compression")().compute(ctx).value == 1.0


@pytest.mark.skipif(not dp.available_engines(), reason="no quantized CPU engine in this torch")
def test_peak_memory_is_measured_per_variant_in_a_child_process(cells: dict[str, EvalContext]) -> None:
    rows = _registry.metrics.get("peak_memory_mb")(batch_sizes="4").compute(cells["pact"])
    assert [r.variant for r in rows] == ["fp32@bs4", "fp32_channels_last@bs4", "fake_quant@bs4", "int8@bs4"]
    for row in rows:
        assert row.value >= 0 and row.extra["peak_mb"] >= row.extra["baseline_mb"]
        assert row.extra["method"] in ("VmHWM-VmRSS", "ru_maxrss")


def test_bad_parameters_are_usage_errors(cells: dict[str, EvalContext]) -> None:
    with pytest.raises(UsageError, match="at least|outside"):
        _registry.metrics.get("latency_ms")(runs=5)
    with pytest.raises(UsageError, match="batch_sizes"):
        _registry.metrics.get("latency_ms")(batch_sizes="one").compute(cells["pact"])


@pytest.mark.parametrize("name", EFFICIENCY)
def test_registered_with_the_metric_api(name: str) -> None:
    cls = _registry.metrics.get(name)
    assert cls.family == "efficiency" and cls.needs_attributions is False


def test_a_burst_times_the_warm_calls_of_each_turn():
    from sgq_bench.metrics.efficiency import time_models

    calls = {"a": 0, "b": 0}

    class Counting(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls[self.name] += 1
            return x

    x = {1: torch.zeros(1, 1)}
    times = time_models({"a": Counting("a"), "b": Counting("b")}, x, runs=4, warmup=2, threads=1, burst=5)
    assert {k: len(v) for k, v in times.items()} == {("a", 1): 4, ("b", 1): 4}
    assert calls == {"a": 2 + 4 * 5, "b": 2 + 4 * 5}  # warm-up, then per turn 1 untimed + 4 timed calls
    cold = time_models({"a": Counting("a")}, x, runs=3, warmup=0, threads=1)
    assert len(cold[("a", 1)]) == 3 and calls["a"] == 22 + 3
    with pytest.raises(ValueError, match="burst=0"):
        time_models({"a": Counting("a")}, x, runs=1, warmup=0, threads=1, burst=0)
