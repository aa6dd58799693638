"""The ONNX Runtime deploy backend: PACT's trained grids exported exactly, agreement with fake-quant,
the same-runtime fp32 reference, the backend as a parameter, and `bench deploy --json`."""

from __future__ import annotations

import json
import pickle
import sys

import pytest
import torch

pytest.importorskip("onnx", reason="the [deploy] extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the [deploy] extra (onnxruntime) is not installed")

from sgq_bench.builtin.quantizers import NoQuantizer, PACTQuantizer  # noqa: E402

from sgq_bench import deploy as dp  # noqa: E402
from sgq_bench.cli import main  # noqa: E402
from sgq_bench.cli.train import spec_from_argv  # noqa: E402
from sgq_bench.data import Synthetic, load_split  # noqa: E402
from sgq_bench.errors import UsageError  # noqa: E402
from sgq_bench.models import resnet20  # noqa: E402
from sgq_bench.specs import ExecContext  # noqa: E402
from sgq_bench.train import load_or_train  # noqa: E402
from tests.test_deploy import _calibrated_random_pact, logit_gap  # noqa: E402


@pytest.fixture(scope="module")
def smoke_pact(tmp_path_factory: pytest.TempPathFactory):
    """A small PACT W4/A4 model trained for real (synthetic data, one epoch)."""
    spec = spec_from_argv(["--dataset", "synthetic", "--suite", "smoke", "--method", "pact", "--train-size", "512",
                           "--epochs", "1"])
    res = load_or_train(spec, ExecContext(checkpoint_dir=tmp_path_factory.mktemp("ckpt"), progress=False))
    return spec, res.model.eval()


def test_ort_int8_agrees_with_fake_quant_on_a_trained_model(smoke_pact) -> None:
    _, model = smoke_pact
    ds = Synthetic()
    int8 = dp.backend("onnxruntime").int8(PACTQuantizer(), model, dp.calibration_inputs(ds, n=256))
    x = ds.normalize(load_split(ds, False).images)
    with torch.inference_mode():
        fq, out = model(x), int8(x)
    assert float((fq.argmax(1) == out.argmax(1)).float().mean()) >= 0.995
    assert float(logit_gap(fq, out).quantile(0.99)) <= 0.05
    info = int8.info
    assert info["exact_weights"] and info["float_ops"] == ["fc2"] and not info["calibrated"]
    # the quantized layers run as integer kernels in the runtime's optimised graph, not as float Conv/Gemm
    assert info["integer_kernels"] >= 1 and info["optimized_ops"].get("QLinearConv", 0) >= 1
    assert info["runtime"] == "onnxruntime" and info["ort_intra_op_threads"] == 1
    assert info["ort_graph_optimization_level"] == "ORT_ENABLE_ALL"


def test_pact_clip_is_deferred_past_max_pool_so_the_pool_runs_nhwc(smoke_pact) -> None:
    # Clip(0, levels) commutes with max-pool; written before it, ONNX Runtime kept the uint8 MaxPool in
    # NCHW, its slow generic kernel (mnist_cnn at batch 1: 0.167 -> 0.109 ms once deferred)
    from sgq_bench.builtin.pact_onnx import pact_onnx

    _, model = smoke_pact
    ds = Synthetic()
    proto, _ = pact_onnx(model, dp.calibration_inputs(ds, n=64))
    producer = {n.output[0]: n.op_type for n in proto.graph.node}
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool"]
    assert pools and all(producer[p.input[0]] == "QLinearConv" for p in pools)
    # the clamp is still there, on the pooled (and flattened) values the next integer layer reads
    assert any(n.op_type == "Clip" and producer.get(n.input[0]) in ("MaxPool", "Flatten") for n in proto.graph.node)
    int8 = dp.backend("onnxruntime").int8(PACTQuantizer(), model, dp.calibration_inputs(ds, n=64))
    assert int8.info["optimized_ops"].get("NhwcMaxPool") == 1 and "MaxPool" not in int8.info["optimized_ops"]


def _random_resnet20_pact() -> tuple[PACTQuantizer, torch.nn.Module]:
    torch.manual_seed(0)

    class Cifar:
        in_channels, num_classes, image_size = 3, 10, 32

    q = PACTQuantizer(w_bits=4, a_bits=4, boundary_bits=8)
    return q, _calibrated_random_pact(resnet20(Cifar()), q, torch.randn(48, 3, 32, 32))


def test_ort_int8_resnet20_float_bias_is_exact_where_trained_on_the_deployment_grids() -> None:
    """BN folding, residual adds on the trained 8-bit BN grid, padded shortcuts, the bias added in float
    after the integer accumulator (``bias=float``): argmax equal everywhere."""
    q, model = _random_resnet20_pact()
    int8 = dp.backend("onnxruntime:bias=float").int8(q, model, torch.randn(48, 3, 32, 32))
    assert len([s for s in int8.info["int8_layers"] if "BN folded" in s]) == 18
    assert not int8.info["calibrated"] and int8.info["float_kernels"] <= 2  # first conv, last linear
    assert int8.info["int8_bias"] == "float" and int8.info["optimized_ops"].get("ConvInteger", 0) >= 18
    x = torch.randn(64, 3, 32, 32)
    with torch.inference_mode():
        fq, out = model(x), int8(x)
    assert float((fq.argmax(1) == out.argmax(1)).float().mean()) >= 0.98
    assert float(logit_gap(fq, out).median()) <= 0.02


def test_ort_int8_resnet20_int32_bias_records_its_rounding() -> None:
    """The fast mode puts the bias inside QLinearConv as an int32 and says, per layer, how far off that
    rounding is (at most half the accumulator step, as a fraction of the output step)."""
    q, model = _random_resnet20_pact()
    int8 = dp.backend("onnxruntime").int8(q, model, torch.randn(48, 3, 32, 32))
    info = int8.info
    assert info["int8_bias"] == "int32" and info["optimized_ops"].get("ConvInteger", 0) == 0
    assert len(info["int32_bias_error"]) >= 18
    assert all(0 < e < 0.5 for e in info["int32_bias_error"].values())
    x = torch.randn(64, 3, 32, 32)
    with torch.inference_mode():
        assert float((model(x).argmax(1) == int8(x).argmax(1)).float().mean()) >= 0.9


def _integer_mismatches(model: torch.nn.Module, x: torch.Tensor, layer: str) -> int:
    """How many integer outputs of ``layer`` (a residual BatchNorm) differ between the ORT int32-bias graph
    and the fake-quant model on ``x``."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from sgq_bench.builtin.pact_onnx import pact_onnx

    proto, _ = pact_onnx(model, x[:32])
    out_name = layer.replace(".", "_").replace("_bn2", "_conv2") + "_int8"
    proto.graph.output.append(onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.UINT8, None))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run([out_name], {"input": x.numpy()})[0].astype(np.int64) - 128
    seen = {}
    bn = model.get_submodule(layer)
    hook = bn.register_forward_hook(lambda m, i, o: seen.__setitem__("y", o.detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    want = torch.round(seen["y"] / bn.out_scale()).long().numpy()
    return int((got != want).sum())


def test_bias_grid_int32_makes_the_int32_bias_exact() -> None:
    """PACT ``bias_grid = "int32"``: the eval-mode folded bias sits on the accumulator grid, so the int32 bias
    QLinearConv adds is the model's own (rounding ~0, not up to half a step), and far fewer integer outputs
    differ from the fake-quant model's (the rest: float32 summation in the fake-quant conv)."""
    from sgq_bench.builtin.pact_layers import GridBiasBatchNorm2d

    class Cifar:
        in_channels, num_classes, image_size = 3, 10, 32

    torch.manual_seed(0)
    x = torch.randn(128, 3, 32, 32)
    models = {}
    for grid in ("float", "int32"):
        torch.manual_seed(0)
        q = PACTQuantizer(bias_grid=grid)
        models[grid] = _calibrated_random_pact(resnet20(Cifar()), q, x)
    grid_bns = [n for n, m in models["int32"].named_modules() if isinstance(m, GridBiasBatchNorm2d)]
    assert len(grid_bns) == 18 and not any(isinstance(m, GridBiasBatchNorm2d) and "_bias_grid_conv" in m.__dict__
                                           for m in models["float"].modules())
    errors = {g: dp.backend("onnxruntime").int8(PACTQuantizer(), m, x[:32]).info["int32_bias_error"]
              for g, m in models.items()}
    assert max(errors["int32"].values()) < 1e-4 < min(errors["float"].values()), errors
    before, after = (_integer_mismatches(models[g], x, "layer1.0.bn2") for g in ("float", "int32"))
    assert after * 10 < before, (before, after)
    # training is unchanged: the train-mode forward is the same model's without a grid, to the bit
    import copy

    gridded = models["int32"]
    plain = copy.deepcopy(gridded)
    for m in plain.modules():
        m.__dict__.pop("_bias_grid_conv", None)
        m.__dict__.pop("_bias_grid_input", None)
    with torch.no_grad():
        assert not torch.equal(plain(x[:16]), gridded(x[:16]))  # eval: the bias moved onto the grid
        plain.train(), gridded.train()
        assert torch.equal(plain(x[:16]), gridded(x[:16]))


def test_bias_grid_survives_a_copy_and_stays_out_of_default_keys() -> None:
    import copy

    from sgq_bench.config.methods import get_method
    from sgq_bench.train import inference_copy

    class Cifar:
        in_channels, num_classes, image_size = 3, 10, 32

    torch.manual_seed(0)
    x = torch.randn(32, 3, 32, 32)
    model = _calibrated_random_pact(resnet20(Cifar()), PACTQuantizer(bias_grid="int32"), x)
    with torch.no_grad():
        want = model(x)
        assert torch.allclose(copy.deepcopy(model)(x), want, atol=0, rtol=0)
    # the copy's grids point at the copy's own layers (channels-last sums differ in float, so no equality)
    fast = inference_copy(model, torch.device("cpu"))
    own = {id(m) for m in fast.modules()}
    grids = [m.__dict__[k] for m in fast.modules() for k in ("_bias_grid_conv", "_bias_grid_input") if k in m.__dict__]
    assert len(grids) == 36 and all(id(g) in own for g in grids)
    # added after pact models were published: the default is not hashed, so their keys do not change
    assert "bias_grid" not in get_method("pact").resolved().quantizer_params
    assert get_method("pact").with_params({"bias_grid": "int32"}).resolved().quantizer_params["bias_grid"] == "int32"


def test_bad_bias_mode_is_one_line() -> None:
    with pytest.raises(UsageError) as err:
        dp.backend("onnxruntime:bias=int16")
    assert "int16" in str(err.value) and "int32" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="key=value"):
        dp.backend("onnxruntime:float")


def test_ort_fp32_is_the_same_float_model(smoke_pact) -> None:
    _, model = smoke_pact
    spec = spec_from_argv(["--dataset", "synthetic", "--suite", "smoke", "--method", "baseline"])
    from sgq_bench import _registry

    torch.manual_seed(0)
    fp32 = _registry.models.get(spec.model)(Synthetic()).eval()
    ort = dp.backend("onnxruntime").fp32(fp32, (1, 16, 16))
    x = torch.randn(16, 1, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(ort(x), fp32(x), rtol=1e-4, atol=1e-4)
    assert ort.info["precision"] == "fp32" and ort.info["float_kernels"] >= 1


def test_ort_model_pickles_for_the_memory_probe(smoke_pact) -> None:
    _, model = smoke_pact
    int8 = dp.backend("onnxruntime").int8(PACTQuantizer(), model, torch.randn(32, 1, 16, 16))
    again = pickle.loads(pickle.dumps(int8))
    x = torch.randn(4, 1, 16, 16)
    assert torch.equal(int8(x), again(x))


def test_float_quantizer_has_no_onnx_export(smoke_pact) -> None:
    _, model = smoke_pact
    with pytest.raises(dp.DeployUnavailable, match="export_onnx"):
        dp.backend("onnxruntime").int8(NoQuantizer(), model, torch.randn(8, 1, 16, 16))


def test_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # None in sys.modules: the import raises ImportError
    with pytest.raises(dp.DeployUnavailable) as err:
        dp.backend("onnxruntime")
    assert "sgq-bench[deploy]" in str(err.value) and "\n" not in str(err.value)


def test_unknown_backend_is_a_usage_error_with_a_suggestion() -> None:
    with pytest.raises(UsageError, match="onnxruntime"):
        dp.backend("onnxrt")
    from sgq_bench.metrics.efficiency import LatencyMs

    with pytest.raises(UsageError, match="deploy='onnxrt'"):
        LatencyMs(deploy="onnxrt")


def test_latency_rows_name_runtime_precision_layout_and_both_references(smoke_pact) -> None:
    from sgq_bench._base import EvalContext
    from sgq_bench.metrics.efficiency import LatencyMs

    spec, model = smoke_pact
    ds = Synthetic()
    q, _ = spec.method.build()
    x = ds.normalize(load_split(ds, False).images[:16])
    ctx = EvalContext(model=model, dataset=ds, x=x, y=torch.zeros(16, dtype=torch.long), device=torch.device("cpu"),
                      spec=spec, quantizer=q)
    rows = LatencyMs(deploy="onnxruntime", batch_sizes="1,4").compute(ctx)
    by = {r.variant: r.extra for r in rows}
    assert set(by) == {f"{v}@bs{b}" for v in ("fp32", "fp32_channels_last", "fake_quant", "int8", "fp32_runtime")
                       for b in (1, 4)}
    assert by["int8@bs1"]["runtime"] == "onnxruntime" and by["int8@bs1"]["precision"] == "int8"
    assert by["fp32_runtime@bs4"]["runtime"] == "onnxruntime" and by["fp32@bs1"]["layout"] == "NCHW"
    for e in by.values():
        assert e["threads"] == 1 and e["batch_size"] in (1, 4)
        assert e["speedup_vs_fp32_eager"] > 0 and e["speedup_vs_fastest_fp32"] > 0
    # int8 in ONNX Runtime is compared with fp32 in ONNX Runtime
    e = by["int8@bs4"]
    want = e["speedup_vs_fp32_eager"] * by["fp32_runtime@bs4"]["median_ms"] / by["fp32@bs4"]["median_ms"]
    assert e["speedup_vs_fp32_same_runtime"] == pytest.approx(want, rel=1e-9)


def test_cli_bench_deploy_json(capsys: pytest.CaptureFixture, tmp_path) -> None:
    rc = main(["bench", "deploy", "--dataset", "synthetic", "--suite", "smoke", "--batch-sizes", "1,8",
               "--train-size", "512", "--epochs", "1", "--json", "--checkpoint-dir", str(tmp_path)],
              standalone_mode=False)
    captured = capsys.readouterr()
    assert rc == 0
    rows = json.loads(captured.out)  # stdout holds only the JSON; the table went to stderr
    assert "fake_quant" in captured.err
    keys = {"runtime", "precision", "batch_size", "threads", "latency_ms", "speedup_vs_fp32_eager",
            "speedup_vs_fp32_same_runtime", "agreement"}
    assert all(keys <= set(r) for r in rows)
    got = {(r["runtime"], r["precision"], r["layout"], r["batch_size"], r.get("int8_bias")) for r in rows}
    assert {(r["runtime"], r["precision"]) for r in rows} >= {("torch", "fp32"), ("torch", "fake_quant"),
                                                              ("torch.ao", "int8"), ("onnxruntime", "int8"),
                                                              ("onnxruntime", "fp32")}
    # the default backends: torch_ao, onnxruntime (int32 bias) and onnxruntime:bias=float; one ORT fp32
    assert len(rows) == len(got) == 7 * 2
    ort = [r for r in rows if r["runtime"] == "onnxruntime" and r["precision"] == "int8"]
    assert sorted({r["int8_bias"] for r in ort}) == ["float", "int32"]
    assert all(r["agreement"] >= 0.99 and r["ort_intra_op_threads"] == 1 for r in ort)


def test_cli_bench_deploy_unknown_backend_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "deploy", "--dataset", "synthetic", "--suite", "smoke", "--backends", "tensorrt"],
                standalone_mode=False) == 2
    err = capsys.readouterr().err
    assert "tensorrt" in err and "Traceback" not in err
