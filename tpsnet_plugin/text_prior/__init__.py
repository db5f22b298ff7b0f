"""Text prior: learnable per-domain CLIP prompts on a frozen open_clip model."""

from .domain_prompt_learner import TINY_CLIP_MODEL, DomainPromptLearner

__all__ = ["DomainPromptLearner", "TINY_CLIP_MODEL"]
