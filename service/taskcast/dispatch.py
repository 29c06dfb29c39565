"""Publishing and cancelling tasks: blocking Celery calls, run in worker threads."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, cast

import anyio.to_thread
from celery import group
from celery.result import GroupResult

from taskcast.broker import BrokerCheck
from taskcast.served import ServedApp
from taskcast_celery import keys, owners
from taskcast_celery.expose import Exposure
from taskcast_celery.owners import Ownership

logger = logging.getLogger(__name__)


class DispatchError(Exception):
    """The broker could not take the task; nothing was left half-dispatched."""


def _owned(ownership: Ownership | None, publish: Callable[..., None], *args: Any) -> None:
    """``publish(*args)`` inside ``ownership`` (``taskcast.owned_by``'s context variable),
    set here, in the thread that publishes: the install's publish hook reads it there."""
    token = owners.adopt(ownership)
    try:
        publish(*args)
    finally:
        owners.release(token)


class Dispatcher:
    """Sends tasks to the broker and revokes them, off the event loop."""

    def __init__(self, served: ServedApp) -> None:
        self.served = served
        self.celery_app = served.celery
        # Whether the broker takes connections (/readyz), asked as this publishes.
        self.broker = BrokerCheck(served.celery)

    async def submit(
        self, exposure: Exposure, kwargs: dict[str, Any], ownership: Ownership | None = None
    ) -> str:
        """Publish a task (``ownership``'s, when given) and return its id. Its SENT
        record exists before the message."""
        task_id = str(uuid.uuid4())
        await anyio.to_thread.run_sync(
            _owned, ownership, self._publish, exposure.task_name, kwargs, task_id
        )
        return task_id

    async def submit_group(
        self,
        exposure: Exposure,
        members: list[dict[str, Any]],
        ownership: Ownership | None = None,
    ) -> tuple[str, list[str]]:
        """Publish a Celery group, one task per parameter set (each ``ownership``'s, when
        given); return the group's id and its members' ids. Every member's SENT record,
        and the group's record of its members, exist before the reply."""
        group_id = str(uuid.uuid4())
        task_ids = [str(uuid.uuid4()) for _ in members]
        await anyio.to_thread.run_sync(
            _owned, ownership, self._publish_group, exposure.task_name, members, group_id, task_ids
        )
        return group_id, task_ids

    async def revoke(self, *task_ids: str) -> None:
        """Cancel tasks: a queued one never runs, a running one is stopped."""
        await anyio.to_thread.run_sync(self._revoke, task_ids)

    def _publish(self, celery_name: str, kwargs: dict[str, Any], task_id: str) -> None:
        # The task's own apply_async: its routing, queue and options are the app's.
        task = self.celery_app.tasks[celery_name]
        try:
            task.apply_async(kwargs=kwargs, task_id=task_id)
        except Exception as exc:
            # The SENT record was written before the publish failed: without the message
            # it would read as queued forever.
            logger.warning("publishing %s failed: %r", task_id, exc, extra={"task_id": task_id})
            try:
                backend = self.served.backend
                backend.client.delete(backend.get_key_for_task(task_id))
            except Exception:
                logger.exception(
                    "could not remove the SENT record of %s", task_id, extra={"task_id": task_id}
                )
            raise DispatchError(str(exc)) from exc
        # Names and ids only: parameters are the client's data (an e-mail address, say).
        logger.info("queued %s as %s", celery_name, task_id, extra={"task_id": task_id})

    def _publish_group(
        self,
        celery_name: str,
        members: list[dict[str, Any]],
        group_id: str,
        task_ids: list[str],
    ) -> None:
        app = self.celery_app
        task = app.tasks[celery_name]
        signatures = [
            task.signature(kwargs=kwargs, task_id=task_id)
            for kwargs, task_id in zip(members, task_ids, strict=True)
        ]
        try:
            # The group id given as the task id is Celery's way to name a group.
            result = cast("GroupResult", group(signatures).apply_async(task_id=group_id))
            # Saved after the members exist: whoever reads the group finds every member.
            result.save(backend=app.backend)
        except Exception as exc:
            logger.warning("publishing group %s failed: %r", group_id, exc)
            # Some members may be queued: cancelled, so that nothing of a group whose
            # client was told "not queued" runs.
            try:
                self._revoke(tuple(task_ids))
            except Exception:
                logger.exception("could not cancel the members of group %s", group_id)
            raise DispatchError(str(exc)) from exc
        logger.info("queued %d %s as group %s", len(task_ids), celery_name, group_id)

    def _revoke(self, task_ids: tuple[str, ...]) -> None:
        backend, prefix = self.served.backend, self.served.key_prefix
        client = backend.client
        with client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                logger.info("revoking %s", task_id, extra={"task_id": task_id})
                # The marker stops a worker that misses the broadcast (it starts later).
                pipe.set(
                    keys.revoked_key(prefix, task_id),
                    b"1",
                    ex=self.served.result_expires or None,
                )
            pipe.execute()
        for task_id in task_ids:
            # Recorded now rather than when a worker gets round to it, so every watcher
            # sees REVOKED even if no worker holds the task. The first final state wins
            # (taskcast_celery.backend), so a late progress write cannot undo it; and
            # written before the broadcast, so a worker's own "terminated" record never
            # races it.
            backend.mark_as_revoked(task_id, "revoked")
        # A task stopped by SIGTERM never reaches task_postrun, which removes its heartbeat:
        # removed here instead, after REVOKED, so that no beat on its way writes it again
        # (a beat finds the task final and writes nothing: taskcast_celery.heartbeat).
        client.delete(*(keys.heartbeat_key(prefix, t) for t in task_ids))
        # One broadcast for them all.
        self.celery_app.control.revoke(list(task_ids), terminate=True, signal="SIGTERM")
