"""Round helpers shared by the CKKS and packed-Paillier tests (same server/client round API)."""

import numpy as np


def run_round(server, client, xs, weights, round_index=0):
    """Every client in ``weights`` encrypts its vector; the server aggregates; a client decrypts."""
    rnd = server.open_round(round_index, weights, xs[0].shape[0])
    for cid, x in zip(weights, xs):
        rnd.add(client.encrypt(x, round_index=round_index, client_id=cid))
    return client.decrypt(rnd.finish(), round_index=round_index)


def weighted_mean(xs, weights):
    """The plaintext reference: the weighted mean of ``xs`` in float64."""
    w = np.array(list(weights.values()), dtype=np.float64)
    return (w[:, None] * np.stack(xs)).sum(0) / w.sum()
