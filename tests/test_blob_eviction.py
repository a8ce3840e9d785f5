"""A job's blobs leave the node's store once the job has ended here: ``net.blob_keep_s``
later, all but its final model. A real node in this trio loop, embedded chain, real training."""

from __future__ import annotations

import dataclasses
import sqlite3
import time

import pytest
import trio
from support import local_config, running_node

from gfl.fl.spec import JobSpec
from gfl.net import BlobStore
from gfl.node.datadir import DataDir
from gfl.node.store import Store


def _spec(rounds: int = 2) -> JobSpec:
    return (
        JobSpec.builder("evict")
        .model("mlp", in_features=64, hidden=16)
        .data("digits")
        .train(epochs=1, batch_size=32, lr=0.05)
        .rounds(rounds, min_updates=1, timeout=60)
        .build()
        .replace(max_samples=2000, admission={"bond": "0.001 ether"})
    )


async def _evicted(node, job_id: str) -> dict:
    sub = node.events.subscription(0)
    while (event := await sub.get()) is not None:
        if event.type == "job.blobs_evicted" and event.data["job_id"] == job_id:
            return event.data
    raise AssertionError("the node stopped before it evicted the job's blobs")


@pytest.mark.trio
async def test_a_finished_jobs_blobs_are_evicted_all_but_its_final_model(init_home):
    config = dataclasses.replace(local_config(blob_keep_s=0.0), data={"digits": ""})
    async with running_node(init_home(config=config), full=True, timeout=120) as node:
        job = await node.jobs.publish_job(_spec())
        hx = job["job_id"]
        with trio.fail_after(90):
            evicted = await _evicted(node, hx)
        row = node.jobs.store.job(hx)
        assert row.status == "finished"
        blobs = node.network.blobs
        # M_0, two updates and two models were stored under the job's tag; the final model stays
        assert evicted["blobs"] == 4
        assert blobs.has(bytes.fromhex(row.model_hash)) and len(blobs) == 1
        assert hx not in blobs.tags()
        assert node.network.stats()["blobs"]["evicted"] == 4  # in `gfl status`


@pytest.mark.trio
async def test_on_restart_ended_jobs_blobs_go_once_their_keep_time_is_over(init_home):
    home = init_home(config=local_config(blob_keep_s=600.0))
    store = Store(home / "node.db")
    spec = _spec()
    for hx, status in (("aa" * 32, "finished"), ("bb" * 32, "cancelled")):
        store.add_job(
            hx,
            spec.to_bytes(),
            spec.spec_hash.hex(),
            "0x" + "11" * 20,
            "j",
            2,
            status,
            "participant",
        )
    blobs = BlobStore(DataDir(home).blobs_dir)
    final = blobs.put(b"aa final model", tag="aa" * 32)
    store.update_job("aa" * 32, model_hash=final.hex())
    old_update = blobs.put(b"aa update", tag="aa" * 32)
    recent_update = blobs.put(b"bb update", tag="bb" * 32)
    store.close()
    with sqlite3.connect(home / "node.db") as db:  # job aa ended 20 minutes ago, bb just now
        db.execute(
            "UPDATE jobs SET updated_at = ? WHERE job_id = ?", (time.time() - 1200, "aa" * 32)
        )
    async with running_node(home, full=True) as node:
        with trio.fail_after(10):
            assert (await _evicted(node, "aa" * 32))["blobs"] == 1
        held = node.network.blobs
        assert held.has(final) and not held.has(old_update) and held.has(recent_update)
        assert held.tags() == ["bb" * 32]
