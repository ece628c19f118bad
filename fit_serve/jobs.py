"""The job store of ``fit-serve`` (``POST /v1/jobs``, ``GET /v1/jobs/{id}``): one replica that holds every job,
so that any ingress replica answers for any job, and runs each job through the model deployment's stream
(progress after each engine step, then the image).

At most ``max_jobs`` jobs are held (running or finished); a finished job is kept ``job_ttl_s`` seconds, and the
oldest finished one makes room for a new job before its time. Jobs live in this replica's memory: they are lost
when it restarts (docs/serving.md, "Jobs"). Imports Ray; never torch.
"""
from __future__ import annotations

import asyncio
import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Optional

from ray import serve
from ray.serve.handle import DeploymentHandle

from fit_serve.config import ServeConfig
from fit_serve.model import Outcome
from fit_serve.retry import RETRIED, ATTEMPTS, backoff

JOBS_NAME = "FitJobs"


@dataclass
class Record:
    """One job: its state (queued, running, done, failed), progress, and result or error."""

    id: str
    created: float
    state: str = "queued"
    steps_done: int = 0
    steps_total: Optional[int] = None
    finished: Optional[float] = None
    outcome: Optional[Outcome] = None
    accepted: asyncio.Event = field(default_factory=asyncio.Event)
    task: Optional[asyncio.Task] = None

    def public(self) -> dict:
        """The ``GET /v1/jobs/{id}`` answer."""
        answer = {"id": self.id, "state": self.state,
                  "progress": {"steps_done": self.steps_done, "steps_total": self.steps_total}}
        if self.state == "done":
            answer["result"] = {"image_png_base64": base64.b64encode(self.outcome.png).decode("ascii"),
                                "parameters": self.outcome.parameters, "timing": self.outcome.timing}
        elif self.state == "failed":
            answer["error"] = self.outcome.error
        return answer


@serve.deployment(name=JOBS_NAME)
class FitJobs:
    def __init__(self, model: DeploymentHandle, config: dict):
        self.config = ServeConfig.from_dict(config)
        self.stream = model.options(stream=True).generate_stream
        self.records: dict[str, Record] = {}

    async def submit(self, fields: dict) -> dict:
        """Start a job of a request's fields: ``{"id", "state"}``, or ``{"status", "error"}`` when the engine refuses
        the fields (422) or the store is full of running jobs (503)."""
        self._forget_expired()
        if len(self.records) >= self.config.max_jobs:
            finished = [r for r in self.records.values() if r.finished is not None]
            if not finished:
                return {"status": 503, "error": f"{self.config.max_jobs} jobs are running; try again later"}
            del self.records[min(finished, key=lambda r: r.finished).id]
        record = Record(secrets.token_urlsafe(12), time.time())
        self.records[record.id] = record
        record.task = asyncio.ensure_future(self._run(record, fields))
        await record.accepted.wait()
        if record.state == "failed" and record.outcome.status < 500:
            del self.records[record.id]
            return {"status": record.outcome.status, "error": record.outcome.error}
        return record.public()

    async def get(self, job_id: str) -> Optional[dict]:
        """The job's state, progress and result; None when it does not exist or has expired."""
        self._forget_expired()
        record = self.records.get(job_id)
        return None if record is None else record.public()

    async def _run(self, record: Record, fields: dict) -> None:
        """Stream the job from the model, again from the start (up to ATTEMPTS) when its replica died."""
        for attempt in range(ATTEMPTS):
            try:
                async for item in self.stream.remote(fields):
                    if isinstance(item, Outcome):
                        self._finish(record, item)
                        return
                    if "state" in item:
                        record.accepted.set()
                    else:
                        record.state = "running"
                        record.steps_done, record.steps_total = item["steps_done"], item["steps_total"]
            except RETRIED as err:
                if attempt == ATTEMPTS - 1:
                    self._finish(record, Outcome(status=503, error=f"the model replica stopped ({type(err).__name__})"
                                                                   f" {ATTEMPTS} times; submit the job again"))
                    return
                await backoff(attempt)
            except Exception as err:        # noqa: BLE001 - a job must end in a state, whatever failed
                self._finish(record, Outcome(status=500, error=f"job failed: {type(err).__name__}"))
                return

    def _finish(self, record: Record, outcome: Outcome) -> None:
        record.outcome = outcome
        record.state = "done" if outcome.status == 200 else "failed"
        record.finished = time.time()
        record.accepted.set()

    def _forget_expired(self) -> None:
        now = time.time()
        for record in [r for r in self.records.values()
                       if r.finished is not None and now - r.finished > self.config.job_ttl_s]:
            del self.records[record.id]
