"""The Ray backend on a Ray started here (2 CPUs, no dashboard, 127.0.0.1 only)."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch
from support import free_port, mnist_dir

from gfl.fl.spec import JobSpec
from gfl.simulate.engine import SimulateError, simulate
from gfl.simulate.ray_backend import RayOptions, _pool_size

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
SPEC = JobSpec(
    name="digits-cnn",
    model="cnn",
    dataset="digits",
    rounds=2,
    model_kwargs={"image_size": 8},
    lr=0.1,
    batch_size=16,
    compression="int8",  # error feedback: the per-client order must be kept
)
RUN = {"num_clients": 8, "fraction": 0.5, "partition": "dirichlet:0.5"}


@pytest.fixture(scope="module")
def local_ray():
    with pytest.MonkeyPatch.context() as env:
        # Ray's single-machine switch: advertise and bind 127.0.0.1, not the machine's address
        env.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        ray.init(
            "local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
        )
        try:
            yield ray
        finally:
            ray.shutdown()


def _hashes(rows):
    return [r["model_hash"] for r in rows]


def test_the_three_backends_train_the_same_models(local_ray):
    """MNIST's CNN: its images reach the Ray actors with other strides than they have here,
    and torch's convolutions round by the layout (the digits' 8x8 images do not show it)."""
    spec = JobSpec.from_dict(
        SPEC.to_dict() | {"dataset": "mnist", "model_kwargs": {}, "batch_size": 10}
    )
    run = {"num_clients": 100, "fraction": 0.04, "data_root": mnist_dir()}
    here = simulate(spec, **run)
    pooled = simulate(spec, backend="processes", workers=2, **run)
    on_ray = simulate(spec, backend="ray", **run)
    assert [r["clients"] for r in here] == [4, 4]
    assert _hashes(pooled) == _hashes(here)
    assert _hashes(on_ray) == _hashes(here)
    assert [r["upload_bytes"] for r in on_ray] == [r["upload_bytes"] for r in here]
    assert local_ray.is_initialized()  # the caller's Ray stays up


def _busy_actors() -> list[psutil.Process]:
    """This test's Ray workers running a client's training (Ray titles them so)."""
    busy = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if p.cmdline()[:1] == ["ray::ClientActor.train"]:
                busy.append(p)
    return busy


def test_an_actor_killed_mid_round_is_replaced_and_the_models_do_not_change(local_ray):
    killed: list[int] = []

    def kill_one(p):
        if p.round == 2 and p.clients_done == 1 and not killed:
            deadline = time.monotonic() + 10
            while not (busy := _busy_actors()) and time.monotonic() < deadline:
                time.sleep(0.01)
            if busy:
                busy[0].send_signal(signal.SIGKILL)
                killed.append(busy[0].pid)

    spec = SPEC.to_dict() | {"local_epochs": 3}  # clients long enough to be caught training
    spec = JobSpec.from_dict(spec)
    on_ray = simulate(spec, backend="ray", progress=kill_one, **RUN)
    assert killed, "no actor was training when round 2's first client finished"
    assert [r["retried"] for r in on_ray] == [0, 1]
    assert _hashes(on_ray) == _hashes(simulate(spec, **RUN))


def test_pool_size_follows_the_cluster_s_cpus_and_gpus():
    assert _pool_size({"CPU": 2.0}, 1, 0, most=10) == 2
    assert _pool_size({"CPU": 16.0, "GPU": 1.0}, 1, 0.25, most=10) == 4
    assert _pool_size({"CPU": 16.0}, 0.5, 0, most=5) == 5
    with pytest.raises(SimulateError, match=r"cannot hold one client \(4 CPUs, 0 GPUs\)"):
        _pool_size({"CPU": 2.0}, 4, 0, most=10)
    with pytest.raises(SimulateError, match="cannot hold one client"):
        _pool_size({"CPU": 2.0}, 1, 0.5, most=10)
    with pytest.raises(SimulateError, match="GPUs must be a whole number or at most 1"):
        _pool_size({"CPU": 2.0, "GPU": 2.0}, 1, 1.5, most=10)


def _gfl(args: list[str], prelude: str = "") -> subprocess.CompletedProcess:
    code = prelude + "import sys\nfrom gfl.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "GFL_"))}
    return subprocess.run(
        [sys.executable, "-c", code, "simulate", "--rounds", "1", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_ray_installed_one_line_names_the_extra():
    hide_ray = textwrap.dedent(
        """
        import importlib.abc, sys

        class HideRay(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, HideRay())
        """
    )
    done = _gfl(["--backend", "ray"], prelude=hide_ray)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "gfl simulate: the ray backend needs Ray, which is not installed here: "
        "pip install 'gfl[ray]'"
    ]


def test_an_unreachable_cluster_is_one_line():
    port = free_port()
    done = _gfl(["--backend", "ray", "--address", f"ray://127.0.0.1:{port}"])
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"gfl simulate: cannot reach the Ray cluster at ray://127.0.0.1:{port}")
    assert "ray start --head" in line


def test_ray_options_only_with_the_ray_backend_and_a_matching_device():
    spec = JobSpec(name="x", model="mlp", dataset="digits", rounds=1)
    with pytest.raises(SimulateError, match="--device cuda together with --client-gpus"):
        simulate(spec, num_clients=2, ray_options=RayOptions(client_gpus=0.5))
    with pytest.raises(SimulateError, match="with Ray, clients train on cpu or cuda"):
        simulate(spec, num_clients=2, backend="ray", device="cuda:1")
