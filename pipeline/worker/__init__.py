"""The worker: consume jobs → moderated completion → route → produce, many jobs in flight, offsets safe.

A job is *done* when its output or review record is acknowledged by the broker (acks=all); only then may its
partition's commit move past it. The parts, each owning its own state (arrows point down only)::

    worker      the thin Worker: lifecycle (start, drain, stop), rebalance callbacks, failure
      ├─ intake      the fetch loop: fetch what there is room for, pause/resume, rewind early batches
      ├─ jobs        one task per started job: process, hand the slot on, deliver, mark done
      ├─ scheduler   pure: call slots, read-ahead, key queues, pause/resume decisions, a state per job
      ├─ processor   decode → call the provider → route (a value in, a value out)
      ├─ sink        encode, fit the size limit, headers, produce until acknowledged
      ├─ offsets     per-partition ledgers and epochs, the commit offset and the commit schedule
      ├─ starts      where a newly assigned partition starts (committed offset, reset policy, held when unsure)
      ├─ cancellations  follows the batches topic: jobs of a cancelled batch go to review uncalled
      └─ ports       the Kafka clients as small contracts (aiokafka in production, in-memory in unit tests)
"""

from pipeline.worker.ports import KafkaClients
from pipeline.worker.processor import CompletionClient
from pipeline.worker.worker import TopicMissing, Worker, WorkerFailed

__all__ = ["CompletionClient", "KafkaClients", "TopicMissing", "Worker", "WorkerFailed"]
