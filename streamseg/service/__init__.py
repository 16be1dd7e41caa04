"""``streamseg serve``: a long-running service whose streams are added and removed over HTTP while the
model keeps running (:mod:`.plan`, :mod:`.supervisor`, :mod:`.api`, :mod:`.streams`)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from typing import Any, Callable

from ..config import Config
from ..models import model_info
from ..runtime import metrics, shm

log = logging.getLogger(__name__)


def serve(config: Config, initial: list[dict[str, Any]], announce: Callable[[str], None] = log.warning) -> int:
    """Run a service until SIGTERM or SIGINT: the lasting stages, the HTTP API at ``serve.http``,
    and the streams of ``serve.state`` (when that file exists) and of ``initial`` (request bodies).
    ``announce`` is told where it serves, once it does. Returns the exit code: 0 when it stopped cleanly."""
    from .api import Api, ApiThread, load_token
    from .plan import build_service
    from .streams import read_state
    from .supervisor import ServiceSupervisor

    model_info(config.model.name)  # an unknown model fails here
    token = load_token(config)
    saved = read_state(config.serve.state) if config.serve.state else []
    ids = {body.get("id") for body in saved}
    ipc_dir = config.transport.ipc_dir or tempfile.mkdtemp(prefix="streamseg-serve-")
    os.makedirs(ipc_dir, exist_ok=True)
    # every process of the service writes its metrics there (before any of them imports prometheus_client)
    os.environ[metrics.ENV] = tempfile.mkdtemp(prefix="metrics-", dir=ipc_dir)
    try:
        plan = build_service(config, ipc_dir)
        run_id = uuid.uuid4().hex[:12] if config.transport.shared_memory and shm.available() else ""
        supervisor = ServiceSupervisor(plan, shm_run=run_id)
        supervisor.initial = saved + [body for body in initial if not body.get("id") or body.get("id") not in ids]
        api = ApiThread(Api(supervisor, config, token, plan.views), config.serve.http)
        api.start_serving()
        announce(f"serving at http://{config.serve.http.rpartition(':')[0]}:{api.port}/ "
                 f"({len(supervisor.initial)} streams to start)")
        try:
            supervisor.run()
        finally:
            api.stop()
    finally:
        if not config.transport.ipc_dir:
            shutil.rmtree(ipc_dir, ignore_errors=True)
        elif os.environ.get(metrics.ENV):
            shutil.rmtree(os.environ[metrics.ENV], ignore_errors=True)
        os.environ.pop(metrics.ENV, None)
    return 0
