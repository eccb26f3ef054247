"""`kairos batch`: stream a whole dataset (.npy/.npz/Parquet) through a V2 server as
low-priority batch work, with outputs in input order, retries, and resumable checkpoints.

    from kairos.client.batch import JobOptions, run_job
    summary = asyncio.run(run_job(JobOptions("mlp256", Path("x.npy"), Path("y.npy"))))
"""

from .cli import JobError, JobOptions, main, register, run_job

__all__ = ["JobError", "JobOptions", "main", "register", "run_job"]
