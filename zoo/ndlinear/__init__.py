"""NdLinear (Reneau, Hu et al., 2025, "NdLinear Is All You Need for Representation Learning").

Paper -> code:
- Sec. 3, the layer (one linear map per mode of a tensor, applied in sequence): ``layer.NdLinear``,
  with ``layer.plan``, the order and grouping of the mode products chosen by a cost model.
- Sec. 4, image classification (a CNN whose head is dense or NdLinear): ``classifier.ImageClassifier``.
- Sec. 4, time series (a one-layer transformer encoder with NdLinear feed-forward on ETT):
  ``forecaster.Forecaster``.
- The forecasting baselines it is measured against (issue 23): repeat-last, seasonal naive and
  DLinear / its plain "Linear" with a closed-form least-squares or SGD fit:
  ``baselines.RepeatLast``, ``baselines.SeasonalNaive``, ``baselines.LinearForecaster``; NdLinear
  inside them: ``LinearForecaster(layer="ndlinear")`` (a day map x an hour map in place of the
  look-back -> horizon matrix) and ``patch.PatchForecaster`` (PatchTST-style, with RevIN:
  ``forecaster.RevIN``) with dense or NdLinear embedding, feed-forward and head.

Configs: ``configs/ndlinear/``; results: ``docs/ndlinear.md``.
"""

from zoo.ndlinear.baselines import LinearForecaster, RepeatLast, SeasonalNaive
from zoo.ndlinear.classifier import ImageClassifier
from zoo.ndlinear.forecaster import Forecaster
from zoo.ndlinear.layer import NdLinear
from zoo.ndlinear.patch import PatchForecaster

__all__ = ["Forecaster", "ImageClassifier", "LinearForecaster", "NdLinear", "PatchForecaster", "RepeatLast",
           "SeasonalNaive"]
