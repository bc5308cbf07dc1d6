"""Test-session settings shared by every test module."""

import torch

# The models under test are tiny; torch's default intra-op thread pool only adds
# contention on a 2-core CI machine (measured ~50x slower under load).
torch.set_num_threads(1)
