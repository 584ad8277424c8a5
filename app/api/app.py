"""create_app: the service's parts, wired together. Each part lives in its own module of this package."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.api.admission import Admission
from app.api.auth import BearerAuthMiddleware, TokenChecker, configured_tokens, open_paths
from app.api.errors import add_error_handlers
from app.api.inference import InferenceRoutes
from app.api.middleware import RequestContextMiddleware
from app.api.oip import OipRoutes
from app.api.openapi import EXPOSED_HEADERS, document_bearer_auth
from app.api.ops import add_ops_routes
from app.api.peers import Peers
from app.config import ServerSettings
from app.metrics import Metrics
from app.runtime.lifecycle import Lifecycle
from app.runtime.models import ModelManager
from app.runtime.pipeline import Pipeline
from app.runtime.threads import name_os_thread


def create_app(
    settings: ServerSettings, manager: ModelManager | None = None, peers: Peers | None = None
) -> FastAPI:
    """The service (one worker of several, with `peers`). Raises TokenFileError when the configured API
    token file cannot be used."""
    tokens = configured_tokens(settings)
    metrics = manager.metrics if manager is not None else Metrics()
    manager = manager or ModelManager(settings, metrics)
    pool = ThreadPoolExecutor(
        settings.decode_threads, thread_name_prefix="decode", initializer=name_os_thread
    )
    pipeline = Pipeline(pool, settings.max_image_pixels, settings.render_max_side)
    lifecycle = Lifecycle()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # In the background, so that /health answers at once; a manager loaded beforehand (Ray Serve
        # replicas load in their constructor) is served as it is.
        loader = asyncio.create_task(manager.load_all()) if manager.loading else None
        try:
            yield
        finally:
            if loader is not None:
                loader.cancel()
                await asyncio.gather(loader, return_exceptions=True)
            await manager.close()
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="MobileViTv2 inference service",
        description="Hugging Face Inference API-compatible image classification, semantic segmentation and "
        "object detection with Apple's MobileViTv2.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.settings, app.state.manager, app.state.metrics = settings, manager, metrics
    app.state.lifecycle = lifecycle
    add_error_handlers(app)
    admission = Admission(settings, lifecycle, metrics)
    InferenceRoutes(settings, manager, pipeline, lifecycle, admission).add_to(app)
    OipRoutes(manager, pipeline, lifecycle, admission, settings.max_body_bytes, peers).add_to(app)
    add_ops_routes(app, manager, lifecycle, metrics, peers)

    # Outermost last: request context (ids, metrics, access log) > CORS (preflights answer without a
    # token, and 401s carry CORS headers so browser code can read them) > bearer auth > routes.
    if tokens:
        unguarded = open_paths(settings)
        document_bearer_auth(app, unguarded)
        app.add_middleware(BearerAuthMiddleware, checker=TokenChecker(tokens), open_paths=unguarded)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=[*EXPOSED_HEADERS],
            max_age=600,
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, log_access=settings.access_log)
    return app
