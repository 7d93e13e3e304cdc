"""Drafters for speculative decoding, one per file, one interface (`Proposer`)."""

from leaninfer.generate.proposers.base import Proposal, Proposer
from leaninfer.generate.proposers.ngram import NgramProposer

__all__ = ["Proposal", "Proposer", "NgramProposer"]
