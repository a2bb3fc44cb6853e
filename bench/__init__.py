"""Benchmark and test support that is not part of the installed product.

* :mod:`bench.zoo`: torchvision / CIFAR-10 ResNet exports to ONNX and CIFAR-10 data helpers;
* :mod:`bench.baselines`: uniform-width and global-L1 pruning baselines the benchmarks compare with.

``bench`` is never installed (``pyproject.toml`` packages only ``halp_onnx*``): it is importable from
the repository root, which pytest (``pythonpath = ["."]``) and the ``tools/`` scripts put on
``sys.path``. Nothing in ``halp_onnx`` may import it.
"""
