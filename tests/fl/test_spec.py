import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from gfl.fl.spec import MAX_SPEC_BYTES, JobSpec, SpecError, load_job_file

REPO = Path(__file__).resolve().parents[2]


def make(**kw):
    base = dict(
        name="digits",
        model="mlp",
        dataset="digits",
        rounds=3,
        model_kwargs={"in_features": 64, "hidden": 32},
        strategy="fedadam",
        strategy_kwargs={"eta": 0.01, "beta1": 0.9},
    )
    base.update(kw)
    return JobSpec(**base)


def test_hash_is_stable_across_processes():
    spec = make()
    code = (
        "from gfl.fl.spec import JobSpec\n"
        "s = JobSpec(name='digits', model='mlp', dataset='digits', rounds=3, "
        "strategy_kwargs={'beta1': 0.9, 'eta': 0.01}, strategy='fedadam', "
        "model_kwargs={'hidden': 32, 'in_features': 64})\n"
        "print(s.spec_hash.hex())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PYTHONHASHSEED": "123"},
    )
    assert out.stdout.strip() == spec.spec_hash.hex()
    assert len(spec.spec_hash) == 32


def test_every_field_change_changes_the_hash():
    spec = make()
    changes = dict(
        name="x",
        model="cnn",
        dataset="mnist",
        rounds=4,
        model_kwargs={"hidden": 33},
        task="classification2",
        local_epochs=2,
        batch_size=7,
        optimizer="adam",
        lr=0.5,
        optimizer_kwargs={"weight_decay": 0.1},
        strategy="fedyogi",
        strategy_kwargs={"eta": 0.02},
        min_updates=2,
        round_timeout=99,
        compression="fp16",
        seed=5,
        trainer="custom",
        weighting="equal",
        max_samples=1000,
        vote_timeout=61,
        availability_timeout=19,
        max_participants=99,
        join_until=3,
        max_missed=4,
        lifetime=7200,
        admission={"bond": "1 gwei"},
        aggregation="sharded",
        replicas=5,
        shards=4,
        privacy={"epsilon": 5.0, "delta": 1e-5, "max_grad_norm": 1.0},
        secure_aggregation={"threshold": 2, "neighbours": 2, "clip": 1.0},
    )
    fields = {f.name for f in dataclasses.fields(JobSpec)} - {"version"}
    assert set(changes) == fields, "every field must be covered"
    hashes = {spec.spec_hash}
    for k, v in changes.items():
        extra = {"trainer": "custom"} if k == "task" else {}
        if k == "weighting":
            extra["max_samples"] = 0  # equal weighting claims no sample counts
        hashes.add(spec.replace(**{k: v}, **extra).spec_hash)
    assert len(hashes) == len(changes) + 1


def test_bytes_roundtrip_and_key_order_irrelevant():
    a = make(strategy_kwargs={"eta": 0.01, "beta1": 0.9})
    b = make(strategy_kwargs={"beta1": 0.9, "eta": 0.01})
    assert a.to_bytes() == b.to_bytes()
    assert JobSpec.from_bytes(a.to_bytes()) == a
    assert make(lr=1).to_bytes() == make(lr=1.0).to_bytes()


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(rounds=0), "rounds"),
        (dict(lr=-1.0), "lr"),
        (dict(strategy="nope"), "strategy"),
        (dict(compression="zip"), "compression"),
        (dict(optimizer="lbfgs"), "optimizer"),
        (dict(model_kwargs={"x": float("nan")}), "finite"),
        (dict(name=""), "name"),
        (dict(batch_size=True), "batch_size"),
        (dict(model_kwargs={"f": object()}), "unsupported"),
    ],
)
def test_validation_errors_are_clear(kw, msg):
    with pytest.raises(SpecError, match=msg):
        make(**kw)


def test_from_bytes_rejects_garbage_oversize_and_noncanonical():
    with pytest.raises(SpecError):
        JobSpec.from_bytes(b"\xc1garbage")
    with pytest.raises(SpecError, match="limit"):
        JobSpec.from_bytes(b"\x00" * (MAX_SPEC_BYTES + 1))
    import msgpack

    d = make().to_dict()
    noncanon = msgpack.packb(dict(reversed(list(d.items()))))
    with pytest.raises(SpecError, match="canonical"):
        JobSpec.from_bytes(noncanon)
    d["evil"] = 1
    with pytest.raises(SpecError, match="unknown"):
        JobSpec.from_bytes(msgpack.packb(d))


def test_toml_file_and_builder(tmp_path):
    text = """
name = "digits-fedavg"
model = "mlp"
dataset = "digits"
rounds = 5
lr = 0.1
[model_kwargs]
in_features = 64
[strategy_kwargs]
"""
    p = tmp_path / "job.toml"
    p.write_text(text)
    spec = load_job_file(p)
    built = (
        JobSpec.builder("digits-fedavg")
        .model("mlp", in_features=64)
        .data("digits")
        .train(lr=0.1)
        .rounds(5)
        .build()
    )
    assert spec == built and spec.spec_hash == built.spec_hash
    assert JobSpec.from_toml(spec.to_toml()) == spec
    with pytest.raises(SpecError, match="TOML"):
        JobSpec.from_toml("name = ")
    with pytest.raises(SpecError, match="missing"):
        JobSpec.from_toml('name = "x"')
    with pytest.raises(SpecError, match="cannot read"):
        load_job_file(tmp_path / "absent.toml")
