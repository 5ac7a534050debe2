"""Quality metrics for generated videos: attribute accuracy, per-frame quality and rollout drift."""

from m4v.eval.attributes import (AttributeClassifier, AttributeScores, parse_caption, score_attributes,
                                 train_attribute_classifier)
from m4v.eval.quality import DriftReport, EvalConfig, Judges, drift_report, evaluate, sharpness

__all__ = ["AttributeClassifier", "AttributeScores", "parse_caption", "score_attributes",
           "train_attribute_classifier", "DriftReport", "EvalConfig", "Judges", "drift_report", "evaluate",
           "sharpness"]
