"""Text prior: learnable per-domain CLIP prompts on a frozen open_clip model."""

from .domain_prompt_learner import CNN_CLIP_MODEL, TINY_CLIP_MODEL, DomainPromptLearner
from .prompt_features import PromptFeatures
from .relabel import relabel_with_prompts

__all__ = ["CNN_CLIP_MODEL", "DomainPromptLearner", "PromptFeatures", "TINY_CLIP_MODEL", "relabel_with_prompts"]
