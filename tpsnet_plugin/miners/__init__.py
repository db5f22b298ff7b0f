"""pml miners for cross-domain pseudo-labels."""

from .domain_prompt_miner import DomainPromptMiner

__all__ = ["DomainPromptMiner"]
