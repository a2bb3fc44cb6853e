"""Shipped latency profiles (``<target>.json``), installed as the package data of ``halp_onnx.hw_profiles``.

This file only makes the folder a regular package so that ``importlib.resources.files`` finds it in
both a wheel install and an editable one; see ``halp_onnx.profiles.store.SHIPPED_DIR``.
"""
