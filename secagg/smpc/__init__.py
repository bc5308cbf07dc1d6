"""Masked secure aggregation (Bonawitz et al. CCS 2017) and SecAgg+ (Bell et al. CCS 2020). See docs/smpc.md."""
