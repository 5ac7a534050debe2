"""Quality metrics for generated videos: attribute accuracy, per-frame quality and rollout drift, and a
probe of how much each caption word steers the model at each pyramid stage."""

from m4v.eval.attributes import (AttributeClassifier, AttributeScores, parse_caption, score_attributes,
                                 train_attribute_classifier)
from m4v.eval.conditioning import caption_sensitivity, format_sensitivity
from m4v.eval.quality import DriftReport, EvalConfig, Judges, drift_report, evaluate, sharpness

__all__ = ["caption_sensitivity", "format_sensitivity", "AttributeClassifier", "AttributeScores",
           "parse_caption", "score_attributes", "train_attribute_classifier", "DriftReport", "EvalConfig",
           "Judges", "drift_report", "evaluate", "sharpness"]
