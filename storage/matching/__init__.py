"""Cross-source matching: which unit of one list is which unit of another.

Entry points: :class:`~storage.matching.job.MatchJob` (run and store a match),
:mod:`storage.matching.review` (list links, accept / reject / relink, CSV).
See docs/matching.md.
"""
