"""Generation: the pyramidal flow-matching scheduler and the text-to-video pipeline."""

from m4v.pipelines.pipeline import M4VPipeline
from m4v.pipelines.scheduler import PyramidFlowScheduler, PyramidFlowSchedulerConfig

__all__ = ["M4VPipeline", "PyramidFlowScheduler", "PyramidFlowSchedulerConfig"]
