"""Quality metrics for generated videos."""

from m4v.eval.attributes import (AttributeClassifier, AttributeScores, parse_caption, score_attributes,
                                 train_attribute_classifier)

__all__ = ["AttributeClassifier", "AttributeScores", "parse_caption", "score_attributes",
           "train_attribute_classifier"]
