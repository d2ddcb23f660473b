"""Pictures people look at: the evaluation report, overlay legends, training curves.

* :func:`write_report` (:mod:`fcn_repro.report.page`): ``evaluate --report DIR``'s
  self-contained HTML page;
* :class:`Gallery` (:mod:`fcn_repro.report.gallery`): the worst and best images by
  per-image IU, kept in bounded memory while the evaluation loop runs;
* :mod:`fcn_repro.report.plots`: every plot, drawn with matplotlib;
* :class:`TrainingPictures` (:mod:`fcn_repro.report.training`): the learning
  curve, TensorBoard event files and the end-of-run report of training.

matplotlib and tensorboard are the optional extra ``pip install
'fcn_repro[report]'``; a feature that needs a missing one refuses in one line
naming the extra (:class:`MissingExtraError`). Importing this package needs
neither.
"""
from fcn_repro.report.extra import MissingExtraError, available, require
from fcn_repro.report.gallery import Entry, Gallery, image_iu, panels
from fcn_repro.report.page import head_labels, render, write_report

__all__ = ["write_report", "render", "head_labels", "Gallery", "Entry", "image_iu", "panels",
           "MissingExtraError", "available", "require"]
