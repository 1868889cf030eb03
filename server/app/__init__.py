"""The Flower ServerApp and nothing else: round loop, reply checks, aggregation, server
optimizers, client sampling, the message exchange, SecAgg+ server side, checkpoints and the
run log it writes.

``fedvlp.server.app:app`` is the ServerApp component (pyproject ``[tool.flwr.app.components]``).
The CLI and tooling around it live in :mod:`fedvlp.server.cli`, which may import this package;
this package never imports that one.
"""

from .rounds import FederationResult, app, make_server_app, round_summary, run_federation

__all__ = ["FederationResult", "app", "make_server_app", "round_summary", "run_federation"]
