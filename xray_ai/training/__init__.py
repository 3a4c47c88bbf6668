"""The training side: datasets, the quick and intensive protocols, evaluation, backbones.

Never imported by the app or by `predict`; `xray_ai.serving` loads what this side saves.
"""
