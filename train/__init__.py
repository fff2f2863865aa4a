"""Training pipeline for fer-edge (needs the ``train`` extra: torch, torchvision).

``python -m train --help`` lists the options; :class:`train.trainer.Trainer`
is the programmatic entry point. ``python -m export.recover MODEL.onnx`` rebuilds
a checkpoint to train from out of a shipped file whose run folder is gone.
"""
