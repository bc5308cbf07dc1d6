"""Use one secagg layer alone: SecAgg+ secure sum of plain numpy vectors (no torch, no FL core).

Twenty parties hold private float vectors; the server learns only their sum, even though two
parties vanish mid-protocol. Run: python examples/embed_layer.py
"""
import numpy as np

from secagg.encoding import FixedPointConfig, decode_sum, encode
from secagg.smpc import DropoutSchedule, SessionConfig, derive_params, new_session_id, run_round

rng = np.random.default_rng(0)  # simulation data only; masks and keys come from os.urandom
ids = tuple(range(1, 21))
private = {u: rng.normal(0.0, 0.3, size=1000) for u in ids}  # e.g. model deltas, sensor stats

fp = FixedPointConfig(clip=4.0, bits=16, modulus_bits=32)  # |x| <= 4 -> Z_{2^32}, step 6e-5
fp.check_budget(n_clients=len(ids))  # the sum cannot wrap around
plan = derive_params(len(ids), dropout_rate=0.1, corruption_rate=0.05)  # SecAgg+ degree, t
cfg = SessionConfig(new_session_id(), round_id=0, client_ids=ids, threshold=plan.threshold,
                    vector_length=1000, modulus_bits=fp.modulus_bits,
                    degree=plan.session_degree)  # small n: complete graph, t=17

drops = DropoutSchedule(masked_input=frozenset({3}), unmasking=frozenset({7}))
report = run_round(cfg, {u: encode(private[u], fp).values for u in ids}, drops)

secure_sum = decode_sum(report.total, fp)
plain_sum = sum(private[u] for u in report.survivors)
print(f"survivors: {report.survivors}")
err, bound = np.abs(secure_sum - plain_sum).max(), len(report.survivors) / fp.scale
print(f"max |secure - plaintext| = {err:.2e} <= {bound:.2e} (one rounding step per survivor)")
print(f"bytes up per client: {np.mean([report.bytes_up[u] for u in report.survivors]):.0f}"
      f" (plaintext float32 would be {4 * 1000})")
