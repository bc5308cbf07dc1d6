"""secagg inside Flower 1.42 (``pip install 'secagg[flower]'``).

Client side: Flower mods (``mod(msg, context, call_next)``) that wrap an unchanged
training function. Server side: round workflows driven from a ServerApp's
``@app.main()`` through a :class:`flwr.serverapp.Grid`. See docs/flower.md.

* :mod:`.workflow`  :class:`RoundWorkflow` interface, :class:`PlaintextWorkflow` reference
* :mod:`.layers`    ``build_workflow(cfg)`` / ``client_mods()``: the ``layer`` flag
* :mod:`.app`       the example ServerApp + ClientApp (autoencoder on real IoT data)
* :mod:`.deploy`    :class:`LocalDeployment`: SuperLink + SuperNodes as local processes
* :mod:`.records`   vectors in records, payload byte accounting, :class:`CountingGrid`
"""

from secagg.integrations.flower.records import CountingGrid, payload_bytes, vector_from_record, vector_to_record
from secagg.integrations.flower.workflow import FlowerRoundResult, PlaintextWorkflow, RoundWorkflow

__all__ = [
    "CountingGrid",
    "FlowerRoundResult",
    "PlaintextWorkflow",
    "RoundWorkflow",
    "payload_bytes",
    "vector_from_record",
    "vector_to_record",
]
