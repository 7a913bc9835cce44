"""Leader election among watcher replicas through a ``coordination.k8s.io`` Lease.

Every replica watches (a standby has the catalog ready when it takes over); only the leader
dispatches. The official client's ``kubernetes.leaderelection`` works against the API, but
cannot be stopped (its loops sleep forever), never releases the lease on shutdown (a rolling
update would leave the cluster without a leader for a whole lease duration), talks through the
global default client, and exits the process on a bad config. This is the same protocol
(client-go's), in a form a service can stop:

* the holder renews every ``retry_period``; a renewal is a PUT with the lease's
  resourceVersion, so two candidates racing get one 200 and one 409;
* a candidate takes over when the record it observed has not changed for
  ``lease_duration`` seconds of its own clock (no cross-machine clock comparison);
* a leader that cannot renew for ``renew_deadline`` stops leading, before anyone can take
  over; one that stops releases the lease so a standby takes over at its next retry.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tasks.settings import LeaderSettings

from . import metrics

log = logging.getLogger(__name__)


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        settings: LeaderSettings,
        identity: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = client.CoordinationV1Api(api)
        self._settings = settings
        self.identity = identity
        self._clock = clock
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self.leading = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Campaign, lead and renew until ``stop``; then release the lease if held."""
        while not stop.is_set():
            try:
                held = self._try_acquire_or_renew()
            except Exception as error:  # the API is down: keep leading until the deadline
                log.warning("lease %s: %s", self._settings.lease_name, error)
                held = False
            self._update(held)
            stop.wait(self._settings.retry_period)
        if self.leading.is_set():
            self._release()
            self._set_leading(False)

    def _update(self, held: bool) -> None:
        now = self._clock()
        if held:
            self._renewed_at = now
            self._set_leading(True)
        elif self.leading.is_set() and now - self._renewed_at > self._settings.renew_deadline:
            log.error("lease %s not renewed in time: no longer leading", self._settings.lease_name)
            self._set_leading(False)

    def _set_leading(self, leading: bool) -> None:
        if leading and not self.leading.is_set():
            log.info("%s is now the leader", self.identity)
            self.leading.set()
        elif not leading and self.leading.is_set():
            self.leading.clear()
        metrics.LEADER.set(1 if leading else 0)

    def _try_acquire_or_renew(self) -> bool:
        name, namespace = self._settings.lease_name, self._settings.namespace
        try:
            lease = self._api.read_namespaced_lease(name, namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            return self._create()
        spec = lease.spec or client.V1LeaseSpec()
        lease.spec = spec
        now = _now()
        if spec.holder_identity != self.identity:
            if not self._expired(spec):
                return False
            spec.holder_identity = self.identity
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.renew_time = now
        spec.lease_duration_seconds = int(self._settings.lease_duration)
        return self._replace(lease)

    def _expired(self, spec: client.V1LeaseSpec) -> bool:
        """Whether the holder has let the lease lapse, judged by this replica's clock."""
        if not spec.holder_identity:
            return True  # released
        record = (spec.holder_identity, spec.renew_time, spec.lease_transitions)
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        duration = spec.lease_duration_seconds or self._settings.lease_duration
        return self._clock() - self._observed_at > duration

    def _create(self) -> bool:
        now = _now()
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self._settings.lease_name),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=int(self._settings.lease_duration),
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        try:
            self._api.create_namespaced_lease(self._settings.namespace, body)
        except ApiException as error:
            if error.status == 409:  # another candidate created it first
                return False
            raise
        return True

    def _replace(self, lease: client.V1Lease) -> bool:
        try:
            self._api.replace_namespaced_lease(
                self._settings.lease_name, self._settings.namespace, lease
            )
        except ApiException as error:
            if error.status == 409:  # someone else wrote it since we read it
                return False
            raise
        return True

    def _release(self) -> None:
        try:
            lease = self._api.read_namespaced_lease(
                self._settings.lease_name, self._settings.namespace
            )
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            self._replace(lease)
            log.info("%s released the lease", self.identity)
        except Exception as error:  # best effort: the lease expires anyway
            log.warning("could not release lease %s: %s", self._settings.lease_name, error)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
