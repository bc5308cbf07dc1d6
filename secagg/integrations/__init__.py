"""Adapters that plug secagg's layers into other federated-learning frameworks.

Each integration is an optional extra (``pip install 'secagg[flower]'``) and is
imported explicitly (``import secagg.integrations.flower``); importing
:mod:`secagg` never imports a framework.
"""
