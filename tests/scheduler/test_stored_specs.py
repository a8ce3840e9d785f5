"""A node upgraded past a job's spec version does not run the job, and still starts.

The spec version names the aggregation arithmetic (docs/protocol.md 2.1): a node that reads
version 3 would vote other model hashes than the nodes running a version 2 job. A job this
node recorded under an older version, active or queued when it stopped, is marked failed
with one sentence when the node starts again (a queued one takes the same path when the
queue starts it); the node goes on.
"""

from __future__ import annotations

import msgpack
import pytest
from support import running_node

from gfl.fl.spec import SPEC_VERSION, JobSpec
from gfl.node.datadir import DataDir
from gfl.node.store import Store
from gfl.scheduler.ports import JobRole, JobStatus


def _older_spec() -> bytes:
    spec = JobSpec(name="old", model="mlp", dataset="digits", rounds=2)
    fields = msgpack.unpackb(spec.to_bytes())
    fields["version"] = SPEC_VERSION - 1
    return msgpack.packb(fields)


@pytest.mark.trio
async def test_a_job_of_an_older_spec_version_is_marked_failed_and_the_node_starts(init_home):
    home = init_home()
    store = Store(DataDir(home).db_path)
    job_id = "aa" * 32
    store.add_job(
        job_id, _older_spec(), "00", "0xowner", "old", 2, JobStatus.ACTIVE, JobRole.PARTICIPANT
    )
    store.close()
    async with running_node(home, full=True) as node:
        row = node.jobs.store.job(job_id)
        assert row.status == JobStatus.ERROR and not node.jobs.running
        assert f"spec version {SPEC_VERSION - 1} is not supported" in row.error
        assert node.jobs.views.summary(job_id)["status"] == JobStatus.ERROR
