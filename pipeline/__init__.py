"""The moderated LLM stream-processing pipeline: Kafka prompt jobs → Chat Completions with inline
moderation → the output topic when clean, the review topic (with a typed reason) otherwise."""

__version__ = "0.1.0"
