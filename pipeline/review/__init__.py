"""The review console: reviewers decide what the pipeline routed to review, and their decisions are records on
the review-decisions topic.

- :mod:`.desk` — the contract the web layer codes against (``Desk`` and its values).
- :mod:`.state` — the pure fold of the review and decisions topics (``ReviewBook``); :mod:`.items` — what a
  review record is as an item (key, score, allowed decisions, filters).
- :mod:`.follower` — tails both topics into a book; :mod:`.log` — ``KafkaDesk``, the desk over Kafka.
- :mod:`.applier` — carries out approve and rerun decisions exactly once (:mod:`.publish` builds the records).
- :mod:`.service` — ``ReviewService``: desk and applier together; :mod:`.metrics` — their Prometheus metrics.
"""
