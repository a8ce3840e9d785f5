import numpy as np
import pytest
import torch

from gfl.fl.codec import params_hash
from gfl.fl.data import load_dataset, split_holdout
from gfl.fl.models import ModelError, build_model, get_params, set_params
from gfl.fl.spec import JobSpec
from gfl.fl.trainer import TrainError, evaluate, initial_params, train_local

torch.set_num_threads(1)

SPEC = JobSpec(
    name="t",
    model="mlp",
    dataset="digits",
    rounds=1,
    model_kwargs={"in_features": 64, "hidden": 32},
    lr=0.1,
    batch_size=16,
)


def test_initial_params_reproducible_and_seeded():
    a, b = initial_params(SPEC), initial_params(SPEC)
    assert params_hash(a) == params_hash(b)
    assert params_hash(initial_params(SPEC.replace(seed=1))) != params_hash(a)


def test_models_have_the_paper_sizes_and_fit_digits():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_model("mlp")) == 199_210  # McMahan 2NN
    assert count(build_model("cnn")) == 1_663_370  # McMahan CNN
    x = torch.zeros(2, 1, 8, 8)
    assert build_model("cnn", image_size=8)(x).shape == (2, 10)
    assert build_model("mlp", in_features=64)(x).shape == (2, 10)
    with pytest.raises(ModelError, match="not installed"):
        build_model("gpt")
    with pytest.raises(ModelError):
        set_params(build_model("mlp"), {"x": np.zeros(1)})


def test_local_training_returns_delta_samples_metrics_and_runs_hooks():
    data, held = split_holdout(load_dataset("digits"), 0.2, 0)
    g = initial_params(SPEC)
    calls = []

    class Hooks:
        def before_train(self, model, spec):
            calls.append("before")

        def after_train(self, model, spec, result):
            calls.append(("after", result.num_samples))

    spec = SPEC.replace(local_epochs=3)
    res = train_local(spec, g, data, hooks=Hooks(), eval_data=held)
    assert calls == ["before", ("after", len(data))]
    assert res.num_samples == len(data) and set(res.update) == set(g)
    local = {k: g[k] + res.update[k] for k in g}
    assert evaluate(SPEC, local, held)["accuracy"] == pytest.approx(res.metrics["accuracy"])
    assert res.metrics["accuracy"] > evaluate(SPEC, g, held)["accuracy"] + 0.3
    # the same seed gives the same update
    res2 = train_local(spec, g, data)
    assert params_hash(res.update) == params_hash(res2.update)


def test_fedprox_mu_keeps_the_update_closer():
    data = load_dataset("digits")
    g = initial_params(SPEC)
    norm = lambda u: sum(float((v.astype(np.float64) ** 2).sum()) for v in u.values())  # noqa: E731
    plain = train_local(SPEC.replace(local_epochs=2), g, data).update
    prox = train_local(
        SPEC.replace(local_epochs=2, strategy="fedprox", strategy_kwargs={"mu": 5.0}), g, data
    ).update
    assert norm(prox) < 0.8 * norm(plain)


def test_trainer_errors():
    with pytest.raises(TrainError, match="not installed"):
        train_local(SPEC.replace(trainer="mine"), initial_params(SPEC), load_dataset("digits"))
    with pytest.raises(TrainError):
        train_local(SPEC, initial_params(SPEC), load_dataset("digits").subset(np.array([], int)))


def test_a_device_this_machine_lacks_is_one_clear_error():
    g, data = initial_params(SPEC), load_dataset("digits")
    # cuda:N one past the last GPU: "no GPU" here, "has N GPU(s)" on a GPU machine
    bad = ["gpu0", "meta", f"cuda:{torch.cuda.device_count()}"]
    if not torch.backends.mps.is_available():
        bad.append("mps")
    for device in bad:
        with pytest.raises(TrainError, match=repr(device)):
            train_local(SPEC, g, data, device=device)
        with pytest.raises(TrainError, match=repr(device)):
            evaluate(SPEC, g, data, device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_training_on_cuda_gives_the_cpu_result(model):
    """The update comes back as CPU numpy arrays of the global dtypes, equal to the CPU's
    up to the GPU's float rounding (cuDNN convolutions use TF32), FedProx's anchor too."""
    kwargs = {"in_features": 64, "hidden": 32} if model == "mlp" else {"image_size": 8}
    spec = SPEC.replace(model=model, model_kwargs=kwargs, local_epochs=2)
    spec = spec.replace(strategy="fedprox", strategy_kwargs={"mu": 0.1})
    data, held = split_holdout(load_dataset("digits"), 0.2, 0)
    g = initial_params(spec)
    cpu = train_local(spec, g, data, eval_data=held)
    gpu = train_local(spec, g, data, device="cuda", eval_data=held)
    for k, v in cpu.update.items():
        u = gpu.update[k]
        assert isinstance(u, np.ndarray) and u.dtype == v.dtype and u.shape == v.shape
        assert np.linalg.norm(u - v) <= 0.05 * np.linalg.norm(v) + 1e-6, k
    assert gpu.metrics["accuracy"] == pytest.approx(cpu.metrics["accuracy"], abs=0.03)
    assert gpu.metrics["accuracy"] > evaluate(spec, g, held)["accuracy"] + 0.2  # it learned
    local = {k: g[k] + gpu.update[k] for k in g}
    on_gpu, on_cpu = evaluate(spec, local, held, device="cuda"), evaluate(spec, local, held)
    assert on_gpu["accuracy"] == pytest.approx(on_cpu["accuracy"], abs=0.01)
    assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], rel=0.01)


def test_get_set_params_roundtrip():
    m = build_model("cnn", image_size=8)
    p = get_params(m)
    m2 = build_model("cnn", image_size=8)
    set_params(m2, p)
    assert params_hash(get_params(m2)) == params_hash(p)
