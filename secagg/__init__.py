"""secagg: privacy-preserving federated learning for IoT anomaly detection.

Layers (each usable alone):

- :mod:`secagg.smpc`   masked secure aggregation (Bonawitz et al. 2017, SecAgg+)
- :mod:`secagg.he`     homomorphic aggregation (CKKS via TenSEAL, packed Paillier via phe)
- :mod:`secagg.dp`     differential privacy mechanisms, accountants and the privacy ledger
- :mod:`secagg.fl`     FedAvg/FedProx core, the ``Aggregator`` seam, robust aggregation
- :mod:`secagg.detect` IoT intrusion data loaders, detectors and metrics

``smpc``, ``he`` and ``dp`` work on flat numeric vectors and never import ``fl``,
``detect`` or torch.
"""

__version__ = "0.1.0"
