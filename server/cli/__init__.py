"""Everything around the ServerApp: the ``fedvlp`` command (:mod:`.main`, including the
hospital-side commands), the study pipeline, sweeps, benchmarks, certificate and operator
tooling, the Flower configuration, the gateway and the simulation harness.

It may import :mod:`fedvlp.server.app` and :mod:`fedvlp.core`; it names the ClientApp by its
component string and never imports :mod:`fedvlp.client`.
"""
